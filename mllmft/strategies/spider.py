"""SPIDER (Huang et al., ICML 2025): importance-discrepancy selective tuning. Selective family.

Each weight has a pre-trained importance N(|θ0|) and a downstream importance N(|Σ g|), the running
signed sum of its gradients. After every step a weight keeps its update only where the downstream
importance beats the pre-trained one, scaled by how much (soft mask; ``mask=binary`` for the paper's
0/1 variant); elsewhere it is pulled back to θ0. No ratio is set by hand. See shared/specs/spider.md.
"""

from __future__ import annotations

import torch

from mllmft.backbones import Backbone
from mllmft.callbacks.anchor import Anchor
from mllmft.callbacks.importance import ImportanceAccumulator
from mllmft.callbacks.weight_allocation import WeightAllocation
from mllmft.strategies.base import TuningStrategy

MASKS = ("soft", "binary")


def normalized_importance(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """N(x) = sigmoid((|x| − mean|x|) / (std|x| + eps)) within the tensor (unbiased std); 0 for an
    all-zero tensor. Computed in fp32, in place on one temporary, without host synchronisation."""
    a = x.detach().abs().float()
    if a.numel() > 1:
        std, mean = torch.std_mean(a)
    else:
        std, mean = torch.zeros((), device=a.device), a.reshape(()).clone()
    a.sub_(mean).div_(std + eps).sigmoid_()
    return a.mul_(mean > 0)  # |x| >= 0, so mean == 0 means the tensor is all zeros


def spider_mask(theta0: torch.Tensor, accumulated: torch.Tensor, mask: str = "soft",
                eps: float = 1e-12) -> torch.Tensor:
    """M for one tensor: R = G / (I + G) where G > I (else 0), M = min(R / mean(R | R > 0), 1).

    Two temporaries of the tensor's size; everything else happens in place in them."""
    importance_pre = normalized_importance(theta0, eps)  # I
    ratio = normalized_importance(accumulated, eps)  # G, becomes R then M
    wins = ratio > importance_pre
    if mask == "binary":
        return wins.float()
    ratio.div_(importance_pre.add_(ratio)).mul_(wins)  # R = G / (I + G) where G > I
    mean_winning = ratio.sum() / wins.sum().clamp(min=1)
    return ratio.div_(mean_winning.clamp(min=eps)).clamp_(max=1.0)


class SPIDER(TuningStrategy):
    """Persistent state: θ0 (the parameters' dtype) + the signed gradient sum (fp32) = 8 bytes per
    trainable parameter in fp32 training, 6 in bf16. The pre-trained importance is recomputed each
    step rather than stored, and masks exist for one tensor at a time."""

    name = "spider"

    def __init__(self, mask: str = "soft", eps: float = 1e-12):
        if mask not in MASKS:
            raise ValueError(f"strategy.mask={mask!r}; expected one of {MASKS}")
        self.mask = mask
        self.eps = eps

    def attach(self, backbone: Backbone) -> None:
        self.anchor = Anchor(backbone.model)
        self.accumulator = ImportanceAccumulator(stats=("signed",))
        self.allocation = WeightAllocation(self.anchor, self._mask, backbone.components, self.name,
                                           state_bytes=self.state_nbytes)

    def state_nbytes(self) -> int:
        return self.anchor.nbytes() + self.accumulator.nbytes()

    def _mask(self, name: str, param: torch.Tensor, theta0: torch.Tensor) -> torch.Tensor:
        accumulated = self.accumulator.get("signed", name)
        if accumulated is None:  # never had a gradient: stays at θ0
            return torch.zeros_like(param)
        return spider_mask(theta0, accumulated, self.mask, self.eps)

    def callbacks(self):
        return [self.accumulator, self.allocation]
