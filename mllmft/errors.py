"""Errors caused by what the user gave us (data, config, checkpoint paths), and a run's stop on a signal.

Entry points print these as one clear message, without a traceback: the message names what is
wrong and where, which is all the user needs.
"""

import signal
from pathlib import Path


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


class Preempted(Exception):
    """Not a mistake: a scheduler's signal stopped the fit after ``step`` (mllmft/preemption.py), its
    checkpoint at ``checkpoint``."""

    def __init__(self, signum: int, step: int, checkpoint: Path):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        super().__init__(
            f"stopped by {signal.Signals(signum).name} after step {step}; its checkpoint is {checkpoint}: "
            f"resume with the same command and ckpt_path={checkpoint}"
        )

    @property
    def exit_status(self) -> int:
        """A process that the signal ended exits with 128 + its number."""
        return 128 + self.signum
