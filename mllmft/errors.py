"""Errors caused by what the user gave us (data, config, checkpoint paths).

Entry points print these as one clear message, without a traceback: the message names what is
wrong and where, which is all the user needs.
"""


class UserInputError(Exception):
    pass


class DataError(UserInputError, ValueError):
    """Bad input data. The message always names the record and where it came from."""


class ConfigError(UserInputError, ValueError):
    """A configuration value that cannot work (unknown name, impossible combination)."""


class CheckpointNotFoundError(UserInputError, FileNotFoundError):
    """A model checkpoint that is neither a local directory nor in the HF cache."""


class StorageError(UserInputError, OSError):
    """A write the machine refused (a full disk, a quota, no permission). The message names the file,
    why, and what was kept: the previous version of it, whole."""
