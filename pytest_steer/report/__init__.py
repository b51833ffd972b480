"""What a run reports: per-case records, terminal tables and summary, JSON, HTML, markdown, merging."""
