"""MagnitudeMask and RandomMask (baselines of the SPIDER authors). Selective family.

A fixed share of each trainable tensor is held at θ0 for the whole run (weight allocation with a
binary mask): the largest-magnitude entries of θ0, or a seeded random choice.
"""

from __future__ import annotations

import zlib

import torch

from mllmft.backbones import Backbone
from mllmft.callbacks.anchor import Anchor
from mllmft.callbacks.weight_allocation import WeightAllocation
from mllmft.checks import check_number
from mllmft.strategies.base import TuningStrategy


def held_entries(theta0: torch.Tensor, freeze_ratio: float, how: str, generator: torch.Generator | None = None):
    """Flat indices of exactly round(freeze_ratio · numel) entries to hold at θ0."""
    k = round(freeze_ratio * theta0.numel())
    if how == "magnitude":
        return theta0.detach().abs().flatten().float().topk(k).indices
    return torch.randperm(theta0.numel(), generator=generator)[:k].to(theta0.device)


class FixedWeightMask(TuningStrategy):
    """Base of MagnitudeMask / RandomMask: ``movable[name]`` (bool) is 1 where the entry may train."""

    how = "magnitude"
    needs_whole_parameters = True

    def __init__(self, freeze_ratio: float = 0.5, seed: int = 0):
        check_number("strategy.freeze_ratio", freeze_ratio, 0, 1)
        self.freeze_ratio = freeze_ratio
        self.seed = seed

    def attach(self, backbone: Backbone) -> None:
        self.anchor = Anchor(backbone.model)
        self.movable = {}
        for name, theta0 in self.anchor.theta0.items():
            # one generator per tensor, seeded from its name: the mask does not depend on tensor order
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(name.encode()))
            movable = torch.ones(theta0.numel(), dtype=torch.bool, device=theta0.device)
            movable[held_entries(theta0, self.freeze_ratio, self.how, generator)] = False
            self.movable[name] = movable.view_as(theta0)
        self.allocation = WeightAllocation(self.anchor, self._mask, backbone.components, self.name,
                                           state_bytes=self.state_nbytes)

    def state_nbytes(self) -> int:
        return self.anchor.nbytes() + sum(m.numel() for m in self.movable.values())

    def _mask(self, name: str, param: torch.Tensor, theta0: torch.Tensor) -> torch.Tensor:
        movable = self.movable[name]
        if movable.device != param.device:
            movable = self.movable[name] = movable.to(param.device)
        return movable

    def callbacks(self):
        return [self.allocation]


class MagnitudeMask(FixedWeightMask):
    """Hold the top ``freeze_ratio`` of |θ0| entries of each tensor at θ0."""

    name = "magnitude_mask"
    how = "magnitude"


class RandomMask(FixedWeightMask):
    """Hold a fixed, seeded random ``freeze_ratio`` of each tensor at θ0."""

    name = "random_mask"
    how = "random"
