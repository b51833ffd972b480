"""What is kept on disk: the baseline store, the result and vector caches, code identity, safe files."""
