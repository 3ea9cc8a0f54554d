"""Pre-emption: a scheduler's SIGTERM (or SIGUSR1) stops a run at the next optimizer step, its progress kept.

A cluster about to pre-empt a job signals it some seconds before killing it (SIGTERM; SLURM's
``--signal`` sends SIGUSR1 or another). Lightning's own handling stops the loop at the next batch and
exits with status 0 (measured: a SIGTERM at step 294 of 300 ended with exit 0, no message, a partial
results.json and the checkpoint of step ~200), and at the next *batch*, which under gradient
accumulation can be inside an accumulation window, where no checkpoint resumes exactly.

``PreemptionCheckpoint`` takes those signals over for the fit: a signal is noted; at the next
optimizer-step boundary every rank learns whether any rank was signalled (one all-reduce of a flag per
step), ``last`` is saved (each ModelCheckpoint's that keeps one, else ``checkpoints/last.ckpt`` in the
run directory), and the fit ends with ``Preempted``. ``mllmft.run`` then writes results.json with
``status: interrupted`` and the step, and the entry point prints one line saying how to resume and
exits with 128 + the signal's number (143 for SIGTERM), as a process killed by it would. A resume from
that checkpoint ends equal to an uninterrupted run (tests/test_preemption.py sends a real signal to a
real process). Under SLURM with Lightning's auto-requeue asked for, its own SIGUSR1 handling is kept.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import lightning as L

from mllmft.checkpointing import save_last
from mllmft.errors import Preempted

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionCheckpoint(L.Callback):
    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        self._last_step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after Lightning set its own handlers (Trainer._run); it puts the originals back at its teardown
        self._last_step = trainer.global_step
        if threading.current_thread() is not threading.main_thread():  # only the main thread may set them
            return
        for signum in SIGNALS:
            if signum == signal.SIGUSR1 and signal.getsignal(signum) not in (signal.SIG_DFL, signal.SIG_IGN, None):
                continue  # someone else's (Lightning's SLURM auto-requeue): theirs
            self._previous[signum] = signal.signal(signum, self._note)

    def _note(self, signum: int, frame) -> None:
        log.info("received %s: stopping after this optimizer step", signal.Signals(signum).name)
        self.signum = signum

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._last_step:  # inside a gradient-accumulation window
            return
        self._last_step = trainer.global_step
        # every rank decides together: the saves below are collective under a sharded engine
        if not trainer.strategy.reduce_boolean_decision(self.signum is not None, all=False):
            return
        raise Preempted(self.signum or signal.SIGTERM, trainer.global_step, self._save_last(trainer))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()
        # a signal after the last step (during the last validation): stop before the final test, which the
        # scheduler would not let finish; the resumed run goes straight to it
        if trainer.strategy.reduce_boolean_decision(self.signum is not None, all=False):
            raise Preempted(self.signum or signal.SIGTERM, trainer.global_step, self._save_last(trainer))

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self._previous = {}

    @staticmethod
    def _save_last(trainer: L.Trainer) -> Path:
        """``last`` of every ModelCheckpoint that keeps one, at this step; else checkpoints/last.ckpt."""
        path = save_last(trainer)
        if path is None:
            path = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
            trainer.save_checkpoint(path)
        return path
