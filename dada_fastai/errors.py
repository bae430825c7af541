"""The one family of mistakes a user can fix: a wrong option, path, file or dataset. The command line turns these,
and only these, into one line on stderr; any other exception is a bug and keeps its traceback."""
from __future__ import annotations

__all__ = ['UserError']


class UserError(Exception):
    """A mistake the user can fix (an option's value, a path, a damaged file); its message says what is wrong, where,
    and what to do. The base of `DatasetError`, `ConfigError`, `WeightsError`, `CheckpointError`, `RunError` and
    `NonFiniteLoss`."""
