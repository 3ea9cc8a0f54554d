"""How a run's checkpoints are saved: atomically, and the last one holding the weights the run scores.

* ``AtomicCheckpointIO``: Lightning's own save writes the file under $TMPDIR and moves it over the old
  one; across filesystems that move is a copy in place, and a full disk cut short leaves neither the
  old checkpoint nor the new. Ours writes ``<dir>/.<name>.tmp`` beside it, fsyncs, renames: a failed
  save keeps the previous checkpoint whole and stops the run with one line saying so.
  Sharded checkpoints (FSDP2's distributed one, DeepSpeed's) are directories their engines write
  themselves, file by file, not through a CheckpointIO: unchanged.
* ``FreshLastCheckpoint``: a ModelCheckpoint saves every N steps; when the training stops between two
  saves (``trainer.max_steps`` not a multiple of N, or stopped early) its ``last.ckpt`` would hold
  older weights than the final test scores. It saves ``last`` once more at the end of training then.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO, cast

import lightning as L
import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mllmft.atomic_io import write_atomically


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose save is whole or absent, in the checkpoint's own directory."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):  # object stores: their own upload
            return super().save_checkpoint(checkpoint, path, storage_options)
        # torch.save needs write and flush of a file, which the writer has
        write_atomically(Path(path), lambda file: torch.save(checkpoint, cast(BinaryIO, file)), "the checkpoint")


def use_atomic_saves(trainer: L.Trainer) -> None:
    """Every single-file checkpoint of ``trainer`` saved atomically; a CheckpointIO the user configured
    (anything but Lightning's default) is kept."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()


class FreshLastCheckpoint(L.Callback):
    """At the end of training, ``last`` of every ModelCheckpoint that keeps one is saved again if it
    holds an earlier step than the weights the run goes on to test."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        save_last(trainer, stale_only=True)


def save_last(trainer: L.Trainer, stale_only: bool = False) -> Path | None:
    """``last`` of every ModelCheckpoint that keeps one, saved at this step (with ``stale_only``, only
    where it holds an earlier one); the first one's path, None without any. Every rank must call it (a
    sharded engine saves collectively; Lightning writes rank 0's file)."""
    kept = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.save_last]
    for callback in kept:
        if not stale_only or callback._last_global_step_saved != trainer.global_step:
            callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))
    return Path(kept[0].last_model_path) if kept else None
