"""The two ways `prewarmer loadtest` fails: bad input (exit code 2) and a failed process (exit code 1)."""

from __future__ import annotations


class UsageError(ValueError):
    """Bad command-line input (exit code 2)."""


class LoadTestError(Exception):
    """A process of the run failed; the message is one line naming it and its last log line."""
