"""Errors a user can act on.

Every problem caused by the user's input (a missing or corrupt file, an unknown target, a bad
flag value, an unloadable model) is raised as :class:`RwkuError`. The command-line interface
prints its message on one line and exits with code 2, without a traceback, so that scripts
and sweeps can tell bad input apart from a crash.
"""

from __future__ import annotations


class RwkuError(Exception):
    """A user-facing error: the message says what is wrong and where (file, line, field)."""

    exit_code = 2


class DataError(RwkuError):
    """Missing, corrupt or malformed benchmark data."""


class ModelError(RwkuError):
    """A model that cannot be resolved or loaded."""


class ConfigError(RwkuError):
    """A bad option or configuration value."""
