"""Sharded checkpoints: written whole or not at all, with the state that differs between ranks beside them.

A tuning strategy's state lives beside this rank's fragments (θ0's companions: SPIDER's gradient sums,
masks, EWC's Fisher), so each rank's differs; Lightning writes a checkpoint's non-tensor state from
rank 0 only. A callback that holds such state subclasses ``PerRankState``; the sharded engines' Lightning
strategies keep its state in ``<checkpoint>/strategy_state/rank<r>.pt`` and read each rank's back on a
resume (the same number of ranks is required and checked).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from lightning import Callback

from mllmft.atomic_io import replace_directory, temporary_of
from mllmft.errors import ConfigError, StorageError

STATE_DIR = "strategy_state"
METADATA = "meta.pt"  # a distributed checkpoint's non-tensor part (Lightning's name)


class PerRankState(Callback):
    """A callback whose ``state_dict`` is this rank's own (a sharded checkpoint keeps one per rank)."""


def split_off_rank_state(checkpoint: dict, callbacks: Iterable[Callback]) -> dict:
    """The states of the ``PerRankState`` callbacks, removed from ``checkpoint``."""
    saved = checkpoint.get("callbacks", {})
    keys = {c.state_key for c in callbacks if isinstance(c, PerRankState)}
    return {k: saved.pop(k) for k in keys if k in saved}


def save_directory_whole(
    lightning_strategy, path: Path, local: Callable[[Path], None], collective: Callable[[Path], None]
) -> None:
    """A sharded checkpoint, a directory each rank writes its part of, written as ``.<name>.tmp`` beside
    ``path`` and swapped in once every rank has written all of its part: a save that fails on any rank
    (a full disk) keeps the previous checkpoint whole, and every rank stops with one line. ``local``
    writes this rank's own files (no communication); ``collective`` the engine's save, which every rank
    enters together, so that a failure of one rank's own files never leaves the others waiting inside
    the engine's collectives."""
    tmp = temporary_of(path)
    if lightning_strategy.is_global_zero:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run that died while saving
    lightning_strategy.barrier()
    for save in (local, collective):
        failure: BaseException | None = None
        try:
            save(tmp)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as err:  # torch.distributed.checkpoint's CheckpointException is a BaseException
            failure = err
        if not lightning_strategy.reduce_boolean_decision(failure is None, all=True):
            if lightning_strategy.is_global_zero:
                shutil.rmtree(tmp, ignore_errors=True)
            raise StorageError(_save_failure(path, failure)) from failure
    lightning_strategy.barrier()
    if lightning_strategy.is_global_zero:
        replace_directory(tmp, path)
    lightning_strategy.barrier()


def _save_failure(path: Path, failure: BaseException | None) -> str:
    if failure is None:
        reason = "another rank could not write its part"
    else:
        reason = (
            getattr(failure, "strerror", None) or (str(failure).strip().splitlines() or [type(failure).__name__])[0]
        )
    kept = f"the previous {path.name} is kept unchanged" if path.exists() else f"no {path.name} was written"
    return f"could not write the checkpoint {path} ({reason}); {kept}"


def save_rank_state(lightning_strategy, checkpoint: dict, directory: Path) -> None:
    """This rank's ``PerRankState`` callbacks' states, moved out of ``checkpoint`` into this rank's file."""
    state = split_off_rank_state(checkpoint, lightning_strategy.lightning_module.trainer.callbacks)
    folder = directory / STATE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"world_size": lightning_strategy.world_size, "state": state},
        folder / f"rank{lightning_strategy.global_rank}.pt",
    )


def load_rank_state(lightning_strategy, checkpoint: dict, directory: Path) -> dict:
    """``checkpoint`` with this rank's saved callback states back in (the same number of ranks required)."""
    path = directory / STATE_DIR / f"rank{lightning_strategy.global_rank}.pt"
    if not path.is_file():
        return checkpoint
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved["world_size"] != lightning_strategy.world_size:
        raise ConfigError(
            f"{directory} was saved by {saved['world_size']} ranks; this run has {lightning_strategy.world_size}: "
            "resume a sharded checkpoint with the same number of processes"
        )
    checkpoint.setdefault("callbacks", {}).update(saved["state"])
    return checkpoint
