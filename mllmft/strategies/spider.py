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
from mllmft.checks import check_number
from mllmft.errors import ConfigError
from mllmft.strategies.base import TuningStrategy

MASKS = ("soft", "binary")


def zscore_coefficients(magnitude: torch.Tensor, eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """(centre, scale) with z = (|x| − centre) · scale = (|x| − mean|x|) / (std|x| + eps), unbiased std.

    An all-zero tensor gets centre = +inf, so that N = sigmoid(z) is exactly 0 there (the spec's
    N(0) = 0) without a separate pass. (|x| − mean) is formed before scaling, so a constant tensor
    gets z = 0 exactly, whatever eps.)"""
    if magnitude.numel() > 1:
        std, mean = torch.std_mean(magnitude)
    else:
        std, mean = torch.zeros((), device=magnitude.device), magnitude.reshape(()).clone()
    return torch.where(mean > 0, mean, float("inf")), 1.0 / (std + eps)


def normalized_importance(x: torch.Tensor, eps: float = 1e-12,
                          coefficients: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """N(x) = sigmoid((|x| − mean|x|) / (std|x| + eps)) within the tensor; 0 for an all-zero tensor.
    fp32, one temporary, no host synchronisation. ``coefficients`` may be cached (θ0's never change)."""
    magnitude = x.detach().abs().float()
    centre, scale = coefficients if coefficients is not None else zscore_coefficients(magnitude, eps)
    return magnitude.sub_(centre).mul_(scale).sigmoid_()


def spider_mask(theta0: torch.Tensor, accumulated: torch.Tensor, mask: str = "soft", eps: float = 1e-12,
                theta0_coefficients: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """M for one tensor: R = G / (I + G) where G > I (else 0), M = min(R / mean(R | R > 0), 1).

    I = N(θ0) is recomputed every step (only its two z-score coefficients may be cached); two
    temporaries of the tensor's size, everything else in place."""
    importance_pre = normalized_importance(theta0, eps, theta0_coefficients)  # I
    ratio = normalized_importance(accumulated, eps)  # G, becomes R then M
    wins = ratio > importance_pre
    if mask == "binary":
        return wins.float()
    ratio.div_(importance_pre.add_(ratio)).mul_(wins)  # R = G / (I + G) where G > I
    inverse_mean = wins.sum().clamp(min=1) / ratio.sum().clamp(min=eps)
    return ratio.mul_(inverse_mean).clamp_(max=1.0)


class SPIDER(TuningStrategy):
    """Persistent state: θ0 (the parameters' dtype) + the signed gradient sum (fp32) = 8 bytes per
    trainable parameter in fp32 training, 6 in bf16. The pre-trained importance is recomputed each
    step rather than stored, and masks exist for one tensor at a time."""

    name = "spider"
    needs_whole_parameters = True

    def __init__(self, mask: str = "soft", eps: float = 1e-12):
        if mask not in MASKS:
            raise ConfigError(f"strategy.mask={mask!r}; expected one of {MASKS}")
        check_number("strategy.eps", eps, 0, low_open=True)
        self.mask = mask
        self.eps = eps

    def attach(self, backbone: Backbone) -> None:
        self.anchor = Anchor(backbone.model)
        self._theta0_coefficients: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # 2 scalars per tensor
        self.accumulator = ImportanceAccumulator(stats=("signed",))
        self.allocation = WeightAllocation(self.anchor, self._mask, backbone.components, self.name,
                                           state_bytes=self.state_nbytes)

    def state_nbytes(self) -> int:
        return self.anchor.nbytes() + self.accumulator.nbytes()

    def _mask(self, name: str, param: torch.Tensor, theta0: torch.Tensor) -> torch.Tensor:
        accumulated = self.accumulator.get("signed", name)
        if accumulated is None:  # never had a gradient: stays at θ0
            return torch.zeros_like(param)
        coefficients = self._theta0_coefficients.get(name)
        if coefficients is None or coefficients[0].device != theta0.device:
            coefficients = self._theta0_coefficients[name] = zscore_coefficients(theta0.abs().float(), self.eps)
        return spider_mask(theta0, accumulated, self.mask, self.eps, coefficients)

    def callbacks(self):
        return [self.accumulator, self.allocation]
