"""Judging results: metrics and verdicts, paired statistics, the run's correction, drift, comparison."""
