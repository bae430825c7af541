"""The one family of mistakes a user can fix: a wrong option, path, file or dataset, a run that cannot start, a disk
that is full. The command line turns these, and only these, into one line on stderr; any other exception is a bug and
keeps its traceback. Every module raises them from here (their old homes still import them)."""
from __future__ import annotations

__all__ = ['UserError', 'ConfigError', 'DatasetError', 'WeightsError', 'CheckpointError', 'RunError', 'DiskFullError']


class UserError(Exception):
    """A mistake the user can fix (an option's value, a path, a damaged file); its message says what is wrong, where,
    and what to do."""


class ConfigError(UserError, ValueError):
    """A configuration that cannot be used (bad YAML, unknown key, bad value)."""


class DatasetError(UserError, ValueError):
    """Bad dataset input; its message is one line: what is wrong, where (the path), what to do."""

    def __init__(self, message: str):
        super().__init__(' '.join(str(message).splitlines()))


class WeightsError(UserError, RuntimeError):
    """A weights file that cannot be used: missing, unsafe, or not matching the model."""


class CheckpointError(WeightsError):
    """A checkpoint that cannot be used (missing, truncated, unsafe, or for another model)."""


class RunError(UserError, RuntimeError):
    """A run that cannot start or continue (existing folder, missing device, nothing to resume)."""


class DiskFullError(UserError, OSError):
    """A file that could not be written for lack of space (or quota); the message names the file, the space it
    needed and the space free, and what survives (the previous file is always intact)."""
