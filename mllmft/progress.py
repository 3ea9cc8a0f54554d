"""Progress a researcher can read: bars that say what they do, counted in optimizer steps, and plain
lines when the output is not a terminal (nohup, SLURM, CI), where a live bar shows nothing until a
phase ends."""

from __future__ import annotations

import logging
import sys
import time

import lightning as L
from lightning.pytorch.callbacks import Callback, RichProgressBar

log = logging.getLogger(__name__)


def _total_steps(trainer: L.Trainer) -> int | float:
    """Optimizer steps of the whole fit (training here is step-based: max_epochs = -1)."""
    return trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else trainer.estimated_stepping_batches


def _test_label(trainer: L.Trainer, module: L.LightningModule, dataloader_idx: int) -> str:
    names = getattr(module, "test_set_names", None) or []
    name = names[dataloader_idx] if dataloader_idx < len(names) else f"set {dataloader_idx}"
    phase = {"zeroshot": " (zero-shot)", "final": ""}.get(getattr(module, "test_phase", ""), "")
    return f"testing {name}{phase}"


class StepProgressBar(RichProgressBar):
    """Rich bars named "fine-tuning" (or ``train_label``), "validating", "testing <set>", the training
    bar over the run's optimizer steps rather than one epoch's batches."""

    def __init__(self, train_label: str = "fine-tuning", **kwargs):
        super().__init__(**kwargs)
        self.train_label = train_label
        self._test = "testing"

    @property
    def validation_description(self) -> str:
        return "validating"

    @property
    def sanity_check_description(self) -> str:
        return "checking validation"

    @property
    def test_description(self) -> str:
        return self._test

    def _get_train_description(self, current_epoch: int) -> str:
        return self.train_label

    def _initialize_train_progress_bar_id(self) -> None:
        self.train_progress_bar_id = self._add_task(_total_steps(self.trainer), self.train_label)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.is_disabled:
            return
        if self.progress is not None and self.train_progress_bar_id is None:  # one bar for the whole fit
            self._initialize_train_progress_bar_id()
        self.refresh()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.is_disabled:
            return
        if self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx: int = 0) -> None:
        self._test = _test_label(trainer, pl_module, dataloader_idx)
        super().on_test_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the logger's version number: not a measurement
        return metrics


class PlainProgress(Callback):
    """When stderr is not a terminal: a log line every ``every_percent`` % of the fit's steps (step,
    share, loss, steps/s) and one per test set (batches, seconds). Silent on a terminal, where the bars are."""

    def __init__(self, every_percent: float = 10.0, train_label: str = "fine-tuning", force: bool = False):
        self.every_percent = every_percent
        self.train_label = train_label
        self.enabled = force or not sys.stderr.isatty()
        self._next = 0.0
        self._started = 0.0
        self._test: tuple[str, int, float] | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._started, self._next = time.perf_counter(), self.every_percent
        if self.enabled and trainer.is_global_zero:
            log.info("%s: %d steps", self.train_label, _total_steps(trainer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not (self.enabled and trainer.is_global_zero):
            return
        total, step = _total_steps(trainer), trainer.global_step
        share = 100.0 * step / max(1, total)
        if share + 1e-9 < self._next and step < total:
            return
        while self._next <= share + 1e-9:
            self._next += self.every_percent
        loss = trainer.callback_metrics.get("train/loss")
        rate = step / max(1e-9, time.perf_counter() - self._started)
        log.info(
            "%s: step %d/%d (%.0f%%)%s, %.2f steps/s",
            self.train_label,
            step,
            total,
            share,
            f", loss {float(loss):.4f}" if loss is not None else "",
            rate,
        )

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx: int = 0) -> None:
        if self.enabled and trainer.is_global_zero and batch_idx == 0:
            self._finish_test(trainer)
            self._test = (_test_label(trainer, pl_module, dataloader_idx), dataloader_idx, time.perf_counter())

    def on_test_end(self, trainer, pl_module) -> None:
        if self.enabled and trainer.is_global_zero:
            self._finish_test(trainer)

    def _finish_test(self, trainer) -> None:
        if self._test is None:
            return
        label, index, started = self._test
        batches = trainer.num_test_batches[index] if index < len(trainer.num_test_batches) else "?"
        log.info("%s: %s batches in %.1f s", label, batches, time.perf_counter() - started)
        self._test = None
