"""pytest-steer: steerability of language models as a pytest regression suite."""

__version__ = "0.1.0"
