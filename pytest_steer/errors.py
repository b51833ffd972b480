"""The one base of every pytest-steer error."""

from __future__ import annotations


class SteerError(Exception):
    """A pytest-steer error whose message names the file, the field and what was expected; the plugin reports
    it as that one line, never as a traceback."""
