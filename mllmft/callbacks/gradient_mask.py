"""GradientMask: multiply each trainable gradient by a mask before clipping and the step (GMT, SPU)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from lightning import Callback

from mllmft.backbones import ComponentMap
from mllmft.callbacks.importance import trainable
from mllmft.callbacks.mask_stats import MaskStats

GradMaskFn = Callable[[str, torch.Tensor], torch.Tensor | None]  # (name, gradient) -> mask or None


class GradientMask(Callback):
    """Runs in ``on_before_optimizer_step`` after any ImportanceAccumulator listed before it.

    Masked entries get no gradient; note that AdamW still moves them by their momentum and weight
    decay (as in the GMT and SPU reference implementations). Use a weight allocation strategy when
    entries must stay exactly at θ0.
    """

    def __init__(self, mask_fn: GradMaskFn, components: ComponentMap):
        self.mask_fn = mask_fn
        self.stats = MaskStats(components)

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        collect = trainer.global_step % max(1, trainer.log_every_n_steps) == 0
        applied = False
        for name, p in trainable(pl_module.model):
            if p.grad is None:
                continue
            mask = self.mask_fn(name, p.grad)
            if mask is None:
                continue
            p.grad.mul_(mask.to(p.grad.dtype))
            applied = True
            if collect:
                self.stats.add(name, mask)
        if collect and applied:
            pl_module.log_dict(self.stats.summarise(trainer.global_step))
