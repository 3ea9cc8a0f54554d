"""MoFO, the momentum-filtered optimizer (Chen et al., arXiv 2407.20999; the authors' code:
YChen-zzz/MoFO, ``AdamW_MoFO``): AdamW whose step moves, in each parameter tensor, only the entries with
the largest first moment, so fine-tuning stays close to the pre-trained weights where its momentum is weak.

Per step, for each parameter tensor p with gradient g (as the authors' code):

    p ← p · (1 − lr·λ)                                   decoupled weight decay, every entry
    m ← β1·m + (1 − β1)·g,  v ← β2·v + (1 − β2)·g²       both moments, every entry
    M = 1[|m| ≥ the k-th largest |m|],  k = ⌊fraction · numel(p)⌋
    p ← p − lr / (1 − β1ᵗ) · (M ⊙ m) / (√v / √(1 − β2ᵗ) + ε)

so ``fraction=1`` is AdamW exactly. The choices where the paper and code are silent: a tensor of one
dimension (a bias, a norm's gain) moves whole, where the code tells them apart by "bias"/"norm" in the
name; k is at least 1 (the code fails on a tensor with fraction · numel < 1); ties at the threshold move
too, as the code's ``>=``. The filter is over each whole tensor, so it runs on one device or under DDP:
FSDP2 and DeepSpeed hand the optimizer parts of tensors (refused at start-up, build.check_settings).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from mllmft.checks import check_number
from mllmft.errors import ConfigError


class MoFO(torch.optim.Optimizer):
    """AdamW stepping only the top ``fraction`` of each tensor's entries by |first moment|."""

    needs_whole_tensors = True  # its filter is over each whole tensor: no engine that shards them

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        fraction: float = 0.03,
        fused: bool | None = None,
        foreach: bool | None = None,
    ):
        check_number("module.optimizer.fraction", fraction, 0, 1, low_open=True)
        for kernel, wanted in (("fused", fused), ("foreach", foreach)):  # AdamW's knobs, from the default module
            if wanted:
                raise ConfigError(
                    f"module.optimizer.{kernel}=true: MoFO filters and steps each tensor on its own; it has no "
                    "fused or multi-tensor kernel (leave it null)"
                )
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})
        self.fraction = fraction

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, decay = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
                if decay:
                    p.mul_(1 - lr * decay)
                m.lerp_(p.grad, 1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                denominator = (v.sqrt() / (1 - beta2**t) ** 0.5).add_(eps)
                update = m if p.dim() < 2 else self._filtered(m)
                p.addcdiv_(update, denominator, value=-lr / (1 - beta1**t))
        return loss

    def _filtered(self, m: torch.Tensor) -> torch.Tensor:
        """``m`` where |m| reaches its tensor's top ``fraction``, 0 elsewhere."""
        k = max(1, int(self.fraction * m.numel()))
        threshold = m.abs().view(-1).kthvalue(m.numel() - k + 1).values
        return torch.where(m.abs() >= threshold, m, torch.zeros_like(m))
