"""Exceptions that describe a user's mistake.

The CLI catches :class:`DdpmkitError` and prints its message on one line (exit code 2); assertions
are kept for internal invariants only.
"""

from __future__ import annotations


class DdpmkitError(Exception):
    """Base class for errors caused by user input (bad config, missing file, wrong size...)."""


class ConfigError(DdpmkitError, ValueError):
    """A configuration value is unknown, of the wrong type, or out of range."""


class DataError(DdpmkitError):
    """A data source is missing, empty or unreadable."""


class RunDirError(DdpmkitError):
    """A run directory is missing or incomplete."""


class CorruptFileError(RunDirError):
    """A file of a run directory (weights, optimizer state) is missing, truncated or tampered."""
