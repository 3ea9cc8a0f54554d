"""The Lightning callbacks that do the strategies' work: θ0 anchors, importance accumulation, weight
allocation after the step, gradient masks before it, and mask diagnostics."""

from mllmft.callbacks.anchor import Anchor
from mllmft.callbacks.gradient_mask import GradientMask
from mllmft.callbacks.importance import ImportanceAccumulator
from mllmft.callbacks.weight_allocation import WeightAllocation

__all__ = ["Anchor", "GradientMask", "ImportanceAccumulator", "WeightAllocation"]
