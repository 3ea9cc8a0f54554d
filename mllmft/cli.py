"""What the console entry points share: one clear line for a user's mistake, not a traceback."""

from __future__ import annotations

import functools
import sys

from mllmft.errors import UserInputError


def user_errors_exit(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserInputError as err:
            print(f"mllmft: error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        finally:
            _finish_wandb()

    return wrapper


def _finish_wandb() -> None:
    """One W&B run per (multirun) job, never one for the whole sweep."""
    if "wandb" in sys.modules:
        import wandb

        wandb.finish()
