"""Gradient-mask strategies: GMT and SPU. Selective family.

* GMT (gradient-mask tuning): every step, keep the top ``keep_ratio`` of |g| of each tensor.
* SPU: score |Σ g| over the first ``score_fraction`` of the optimizer steps (unmasked), then keep the
  top ``keep_ratio`` of each tensor as a fixed binary gradient mask for the rest of training.
"""

from __future__ import annotations

import math
import re

import torch
from lightning import Callback

from mllmft.backbones import Backbone
from mllmft.callbacks.gradient_mask import GradientMask
from mllmft.callbacks.importance import ImportanceAccumulator
from mllmft.checks import check_number
from mllmft.strategies.base import TuningStrategy


def top_fraction_mask(scores: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """1 on exactly k = max(1, round(keep_ratio · numel)) largest entries of ``scores``, 0 elsewhere.

    A k-th-value threshold (3-4x faster than topk on a CPU) plus the first tied entries at the
    threshold, so ties never change the count."""
    flat = scores.detach().flatten().float()
    n = flat.numel()
    k = max(1, round(keep_ratio * n))
    if k >= n:
        return torch.ones_like(scores, dtype=torch.bool)
    threshold = flat.kthvalue(n - k + 1).values
    mask = flat > threshold
    missing = k - int(mask.sum())
    if missing > 0:
        mask[(flat == threshold).nonzero().squeeze(1)[:missing]] = True
    return mask.view_as(scores)


class GMT(TuningStrategy):
    name = "gmt"
    needs_whole_parameters = True

    def __init__(self, keep_ratio: float = 0.2):
        check_number("strategy.keep_ratio", keep_ratio, 0, 1, low_open=True)
        self.keep_ratio = keep_ratio

    def attach(self, backbone: Backbone) -> None:
        self.gradient_mask = GradientMask(lambda name, grad: top_fraction_mask(grad.abs(), self.keep_ratio),
                                          backbone.components)

    def callbacks(self):
        return [self.gradient_mask]


class _SPUMasks(Callback):
    """Builds SPU's fixed masks when the scoring window closes; saved in checkpoints."""

    def __init__(self, spu: SPU):
        self.spu = spu

    def on_train_start(self, trainer, pl_module) -> None:
        if self.spu.accumulator.window_steps is None:
            total = int(trainer.estimated_stepping_batches)
            self.spu.accumulator.window_steps = max(1, math.ceil(self.spu.score_fraction * total))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        acc = self.spu.accumulator
        if self.spu.masks is None and acc.steps >= acc.window_steps:
            self.spu.masks = {name: top_fraction_mask(total.abs(), self.spu.keep_ratio)
                              for name, total in acc.state["signed"].items()}
            acc.state["signed"] = {}  # the sums are no longer needed

    def state_dict(self) -> dict:
        return {"masks": self.spu.masks, "window_steps": self.spu.accumulator.window_steps}

    def load_state_dict(self, state_dict: dict) -> None:
        self.spu.masks = state_dict["masks"]
        self.spu.accumulator.window_steps = state_dict["window_steps"]


class SPU(TuningStrategy):
    name = "spu"
    needs_whole_parameters = True

    def __init__(self, score_fraction: float = 0.25, keep_ratio: float = 0.1, param_filter: str | None = None):
        """``param_filter``: a regex on parameter names; trainable parameters that do not match are
        frozen (the original SPU trains the first MLP linear of each block: ``mlp\\.(gate|up)_proj``)."""
        check_number("strategy.score_fraction", score_fraction, 0, 1, low_open=True)
        check_number("strategy.keep_ratio", keep_ratio, 0, 1, low_open=True)
        self.score_fraction = score_fraction
        self.keep_ratio = keep_ratio
        self.param_filter = param_filter
        self.masks: dict[str, torch.Tensor] | None = None

    def attach(self, backbone: Backbone) -> None:
        if self.param_filter:
            pattern = re.compile(self.param_filter)
            for name, p in backbone.model.named_parameters():
                if p.requires_grad and not pattern.search(name):
                    p.requires_grad_(False)
        self.accumulator = ImportanceAccumulator(stats=("signed",), window_steps=None)
        self.builder = _SPUMasks(self)
        self.gradient_mask = GradientMask(self._mask, backbone.components)

    def _mask(self, name: str, grad: torch.Tensor) -> torch.Tensor | None:
        if self.masks is None:
            return None  # still scoring: plain steps
        mask = self.masks.get(name)
        if mask is None:  # no gradient during scoring: nothing selected
            return torch.zeros_like(grad)
        if mask.device != grad.device:
            mask = self.masks[name] = mask.to(grad.device)
        return mask

    def state_nbytes(self) -> int:
        masks = sum(m.numel() for m in (self.masks or {}).values())
        return self.accumulator.nbytes() + masks

    def callbacks(self):
        return [self.accumulator, self.builder, self.gradient_mask]
