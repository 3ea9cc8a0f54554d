"""Gradient-mask strategies: GMT and SPU. Selective method group.

* GMT (gradient-mask tuning): every step, keep the top ``keep_ratio`` of |g| of each tensor.
* SPU: score |Σ g| over the first ``score_fraction`` of the optimizer steps (unmasked), then keep the
  top ``keep_ratio`` of each tensor as a fixed binary gradient mask for the rest of training.
"""

from __future__ import annotations

import math

import torch

from mllmft.backbones import Backbone
from mllmft.checks import check_number, compiled_regex
from mllmft.strategies.core import tensor_stats
from mllmft.strategies.core.contract import TuningStrategy, tensor_nbytes


def keep_count(keep_ratio: float, numel: int) -> int:
    return min(numel, max(1, round(keep_ratio * numel)))


def top_fraction_mask(scores: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """1 on exactly k = max(1, round(keep_ratio · numel)) largest entries of a whole tensor's
    ``scores``, 0 elsewhere: those above the k-th value, then the first tied at it, so ties never
    change the count (``tensor_stats.top_k_masks`` on fragments; this is its one-tensor form)."""
    from mllmft.engines import Engine

    flat = scores.detach().reshape(-1).float()
    return tensor_stats.top_k_masks(Engine(), [flat], [keep_count(keep_ratio, flat.numel())])[0].view_as(scores)


class GMT(TuningStrategy):
    """Every step, only the top ``keep_ratio`` of |g| of each tensor reaches the optimizer."""

    def __init__(self, keep_ratio: float = 0.2):
        check_number("strategy.keep_ratio", keep_ratio, 0, 1, low_open=True)
        self.keep_ratio = keep_ratio

    def before_step(self, ctx) -> None:
        fragments = [f for f in ctx.fragments if f.grad() is not None]
        grads = [f.grad() for f in fragments]
        masks = tensor_stats.top_k_masks(
            ctx.engine, [g.abs() for g in grads], [keep_count(self.keep_ratio, f.numel) for f in fragments]
        )
        for f, grad, mask in zip(fragments, grads, masks):
            grad.mul_(mask)
            if ctx.logging:
                ctx.mask_stats.add(f.name, mask)


class SPU(TuningStrategy):
    """Score |Σ g| over the first ``score_fraction`` of the optimizer steps (plain steps), then only
    the top ``keep_ratio`` of each tensor's scores take gradient for the rest of training."""

    def __init__(self, score_fraction: float = 0.25, keep_ratio: float = 0.1, param_filter: str | None = None):
        """``param_filter``: a regex on parameter names; trainable parameters that do not match are
        frozen (the original SPU trains the first MLP linear of each block: ``mlp\\.(gate|up)_proj``)."""
        check_number("strategy.score_fraction", score_fraction, 0, 1, low_open=True)
        check_number("strategy.keep_ratio", keep_ratio, 0, 1, low_open=True)
        self.score_fraction = score_fraction
        self.keep_ratio = keep_ratio
        self.param_filter = compiled_regex("strategy.param_filter", param_filter) if param_filter else None
        self.window_steps: int | None = None
        self.scores: dict[str, torch.Tensor] = {}  # Σ g during the window, fp32
        self.masks: dict[str, torch.Tensor] | None = None  # afterwards, bool

    def attach(self, backbone: Backbone) -> None:
        if self.param_filter:
            for name, p in backbone.model.named_parameters():
                if p.requires_grad and not self.param_filter.search(name):
                    p.requires_grad_(False)

    def start(self, ctx) -> None:
        if self.window_steps is None:
            self.window_steps = max(1, math.ceil(self.score_fraction * ctx.total_steps))
        if self.masks is None:
            self.scores = {
                f.name: self.scores[f.name].to(f.values().device)
                if f.name in self.scores
                else torch.zeros(f.size, dtype=torch.float32, device=f.values().device)
                for f in ctx.fragments
            }
        else:
            self.masks = {f.name: self.masks[f.name].to(f.values().device) for f in ctx.fragments}

    def before_step(self, ctx) -> None:
        if self.masks is None and ctx.step >= self.window_steps:  # the window has closed: choose
            fragments = ctx.fragments
            chosen = tensor_stats.top_k_masks(
                ctx.engine,
                [self.scores[f.name].abs() for f in fragments],
                [keep_count(self.keep_ratio, f.numel) for f in fragments],
            )
            self.masks = {f.name: m for f, m in zip(fragments, chosen)}
            self.scores = {}
        for f in ctx.fragments:
            grad = f.grad()
            if grad is None:
                continue
            if self.masks is None:
                self.scores[f.name].add_(grad.float())
                continue
            mask = self.masks[f.name]
            grad.mul_(mask)
            if ctx.logging:
                ctx.mask_stats.add(f.name, mask)

    def state_nbytes(self) -> int:
        return tensor_nbytes(self.scores, self.masks or {})

    def state_dict(self) -> dict:
        return {"scores": self.scores, "masks": self.masks, "window_steps": self.window_steps}

    def load_state_dict(self, state: dict) -> None:
        self.window_steps = state.get("window_steps")
        self.scores = dict(state.get("scores") or {})
        self.masks = state.get("masks")
