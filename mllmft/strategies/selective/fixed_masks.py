"""MagnitudeMask and RandomMask (baselines of the SPIDER authors). Selective method group.

A fixed share of each trainable tensor is held at θ0 for the whole run (weight allocation with a
binary mask): the largest-magnitude entries of θ0, or a seeded random choice.
"""

from __future__ import annotations

import zlib

import torch

from mllmft.checks import check_number, check_seed
from mllmft.strategies.core.contract import TuningStrategy, tensor_nbytes
from mllmft.strategies.core.theta0 import Theta0


def held_entries(theta0: torch.Tensor, freeze_ratio: float, how: str, generator: torch.Generator | None = None):
    """Flat indices of exactly round(freeze_ratio · numel) entries to hold at θ0."""
    k = round(freeze_ratio * theta0.numel())
    if how == "magnitude":
        return theta0.detach().abs().flatten().float().topk(k).indices
    return torch.randperm(theta0.numel(), generator=generator)[:k]


class FixedWeightMask(TuningStrategy):
    """Base of MagnitudeMask / RandomMask: ``movable[name]`` (bool, this rank's part) is True where the
    entry may train. The mask is chosen on the whole tensor when fitting starts, then cut to the part."""

    how = "magnitude"
    writes_weights = True
    captures_weights = True

    def __init__(self, freeze_ratio: float = 0.5, seed: int = 0):
        check_number("strategy.freeze_ratio", freeze_ratio, 0, 1)
        check_seed("strategy.seed", seed)
        self.freeze_ratio = freeze_ratio
        self.seed = seed
        self.theta0 = Theta0()
        self.movable: dict[str, torch.Tensor] = {}
        self._whole_masks: dict[str, torch.Tensor] = {}

    def capture(self, weights) -> None:
        self.theta0.capture(weights)
        self._whole_masks = {}
        for name, theta0 in weights.items():
            # one generator per tensor, seeded from its name: the mask does not depend on tensor order
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(name.encode()))
            movable = torch.ones(theta0.numel(), dtype=torch.bool)
            movable[held_entries(theta0, self.freeze_ratio, self.how, generator)] = False
            self._whole_masks[name] = movable

    def start(self, ctx) -> None:
        self.theta0.place(ctx.fragments)
        self.movable = {f.name: f.copy_part(self._whole_masks[f.name]) for f in ctx.fragments}
        self._whole_masks = {}

    def after_step(self, ctx) -> None:
        for f in ctx.fragments:
            values, movable = f.values(), self.movable[f.name]
            values.lerp_(self.theta0[f.name].to(values.dtype), (~movable).to(values.dtype))
            if ctx.logging:
                ctx.mask_stats.add(f.name, movable)

    def state_nbytes(self) -> int:
        return self.theta0.nbytes() + tensor_nbytes(self.movable, self._whole_masks)


class MagnitudeMask(FixedWeightMask):
    """Hold the top ``freeze_ratio`` of |θ0| entries of each tensor at θ0."""

    how = "magnitude"


class RandomMask(FixedWeightMask):
    """Hold a fixed, seeded random ``freeze_ratio`` of each tensor at θ0."""

    how = "random"
