"""``StepContext``: everything a tuning strategy's hook may use. No hook reaches past it to the trainer,
so a strategy reads the same on every engine and can be driven by hand in a test or a bench."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mllmft.backbones import ComponentMap
from mllmft.engines import Engine, Fragment
from mllmft.strategies.core.mask_stats import MaskStats


def _unchanged(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


@dataclass
class StepContext:
    """What a strategy hook sees. ``step``: the optimizer step being taken (before_*) or just taken
    (after_*), counted from 0. ``logging``: whether this step's diagnostics are logged."""

    engine: Engine  # where each tensor lives on this rank; reductions over the ranks that share tensors
    fragments: list[Fragment]  # this rank's part of every trainable tensor
    components: ComponentMap | None = None  # which component (vision, connector, llm) a name belongs to
    module: Any = None  # the LightningModule: its model for extra forwards (CoMMIT's κ, EWC's Fisher)
    optimizer: torch.optim.Optimizer | None = None  # the torch optimizer taking the steps (its groups' lrs)
    scheduler: Any = None  # its lr schedule, stepped every optimizer step (None: constant lrs)
    total_steps: int = 0  # the optimizer steps of the whole fit
    accumulate_grad_batches: int = 1  # batches per optimizer step
    upstream_batches: Callable[[str, int], Iterable[dict]] | None = None  # (split, batch size) -> loader
    mean_over_ranks: Callable[[torch.Tensor], torch.Tensor] = _unchanged  # over the data-parallel ranks
    out_dir: Path = Path(".")  # the run directory (a strategy's figures)
    is_global_zero: bool = True  # whether this rank writes the run's files
    loggers: list = field(default_factory=list)  # the experiment loggers (log_now)
    step: int = 0
    logging: bool = False
    metrics: dict[str, float] = field(default_factory=dict)
    mask_stats: MaskStats | None = None

    def log(self, values: dict[str, float]) -> None:
        """Logged with the step's other metrics (every ``trainer.log_every_n_steps`` steps)."""
        self.metrics.update(values)

    def log_now(self, values: dict[str, float], step: int) -> None:
        """Straight to the loggers, whatever ``trainer.log_every_n_steps`` (a measurement every K steps)."""
        for logger in self.loggers:
            logger.log_metrics(values, step=step)


def torch_optimizer(optimizer) -> torch.optim.Optimizer:
    """The torch optimizer that takes the step: DeepSpeed's ZeRO optimizers wrap one (over their flat
    partitions, with the same parameter groups)."""
    while not isinstance(optimizer, torch.optim.Optimizer) and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer
