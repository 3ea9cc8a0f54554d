"""WeightAllocation: after every optimizer step, θ ← θ0 + M ⊙ (θ̃ − θ0), tensor by tensor.

Used by SPIDER (a mask recomputed every step from importances) and by MagnitudeMask / RandomMask
(a fixed binary mask). The update is applied with ``lerp`` so that M = 0 gives θ0 and M = 1 gives θ̃
bit for bit: forcing M ≡ 1 reproduces plain fine-tuning exactly, held entries never drift from θ0.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from lightning import Callback

from mllmft.backbones import ComponentMap
from mllmft.callbacks.anchor import Anchor
from mllmft.callbacks.mask_stats import MaskStats

log = logging.getLogger(__name__)
MaskFn = Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor]  # (name, θ̃, θ0) -> M in [0, 1]


class WeightAllocation(Callback):
    """Runs as a post-hook of ``optimizer.step`` (so once per real step, whatever the gradient
    accumulation), writing the weights the next forward uses. Logs mask density and mean value per
    component and per layer every ``trainer.log_every_n_steps`` steps; draws the per-layer density
    heatmap ``<run dir>/<name>_mask_density.png`` at the end of training."""

    def __init__(self, anchor: Anchor, mask_fn: MaskFn, components: ComponentMap, name: str,
                 state_bytes: Callable[[], int]):
        self.anchor = anchor
        self.mask_fn = mask_fn
        self.name = name
        self.stats = MaskStats(components)
        self.state_bytes = state_bytes
        self._handles: list = []
        self._params: list = []
        self._numel = 1
        self._trainer = None
        self._pending: dict[str, float] | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._trainer = trainer
        self.anchor.follow(pl_module.model)
        self._params = list(self.anchor.named(pl_module.model))
        self._numel = max(1, sum(p.numel() for _, p, _ in self._params))
        self._handles = [opt.register_step_post_hook(self._after_step) for opt in trainer.optimizers]
        log.info("%s: %.2f bytes of strategy state per trainable parameter", self.name,
                 self.state_bytes() / self._numel)

    @torch.no_grad()
    def _after_step(self, optimizer, args, kwargs) -> None:
        step = self._trainer.global_step  # not yet incremented for this step
        collect = step % max(1, self._trainer.log_every_n_steps) == 0
        for name, p, theta0 in self._params:
            mask = self.mask_fn(name, p, theta0)
            p.lerp_(theta0, 1 - mask.to(p.dtype))
            if collect:
                self.stats.add(name, mask)
        if collect:
            self._pending = self.stats.summarise(step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._pending is not None:
            pl_module.log_dict({**self._pending, "strategy/state_bytes_per_param": self.state_bytes() / self._numel},
                               batch_size=len(batch["ids"]))
            self._pending = None

    def on_train_end(self, trainer, pl_module) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if trainer.is_global_zero:
            path = self.stats.save_heatmap(Path(trainer.default_root_dir) / f"{self.name}_mask_density.png",
                                           f"{self.name}: share of each layer's weights allowed to move")
            if path:
                log.info("mask density heatmap: %s", path)
