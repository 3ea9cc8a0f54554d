"""Merges of the task vector δ = θ_ft − θ0, one tensor at a time: WiSE-FT (Wortsman et al.,
CVPR 2022), task arithmetic (Ilharco et al., ICLR 2023), DARE (Yu et al., ICML 2024), TIES (Yadav et
al., NeurIPS 2023).

* ``wise_ft``: θ0 + α·δ, as ``lerp``: α = 0 is θ0 and α = 1 is θ_ft, bit for bit.
* ``task_arithmetic``: θ0 + λ·δ (λ > 1 extrapolates).
* ``dare``: each entry of δ dropped with probability p, survivors rescaled by 1/(1 − p) (unbiased),
  then θ0 + λ·δ̃. Seeded per tensor (the seed and the tensor's name), whatever the order.
* ``ties``: the largest ``density`` share of |δ| kept, signs elected, θ0 + λ·δ̃; with a single task
  vector the election keeps every survivor: magnitude trimming.

DARE's and TIES' pruning are peft's (``peft.utils.merge_utils``; its ``density`` is the kept share).
"""

from __future__ import annotations

import zlib

import torch
from peft.utils import merge_utils

from mllmft.checks import check_number, check_seed
from mllmft.merges.base import MergeMethod


class WiSEFT(MergeMethod):
    """WiSE-FT (Wortsman et al., 2022): (1 − α) θ0 + α θ_ft, tensor by tensor."""

    name = "wise_ft"

    def __init__(self, alpha: float = 0.5):
        check_number("merge.alpha", alpha, 0, 1)
        self.alpha = alpha

    def merge(self, name, theta0, theta_ft):
        return torch.lerp(theta0, theta_ft, self.alpha)


class TaskArithmetic(MergeMethod):
    """Task arithmetic (Ilharco et al., 2023): θ0 + ``scale`` · (θ_ft − θ0)."""

    name = "task_arithmetic"

    def __init__(self, scale: float = 1.0):
        check_number("merge.scale", scale, 0, low_open=True)
        self.scale = scale

    def merge(self, name, theta0, theta_ft):
        return merge_utils.task_arithmetic([theta_ft - theta0], torch.tensor([self.scale])) + theta0


class DARE(MergeMethod):
    """DARE (Yu et al., 2024): drop each entry of δ = θ_ft − θ0 with probability ``drop``, rescale the rest
    by 1/(1 − drop), add ``scale`` · δ to θ0."""

    name = "dare"

    def __init__(self, drop: float = 0.9, scale: float = 1.0, seed: int = 0):
        check_number("merge.drop", drop, 0, 1, high_open=True)
        check_number("merge.scale", scale, 0, low_open=True)
        check_seed("merge.seed", seed)
        self.drop, self.scale, self.seed = drop, scale, seed

    def merge(self, name, theta0, theta_ft):
        # peft draws from the global generator: a fork of it, seeded from (seed, name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + zlib.crc32(name.encode()))
            delta = merge_utils.dare_linear([theta_ft - theta0], torch.tensor([self.scale]), 1 - self.drop)
        return theta0 + delta


class TIES(MergeMethod):
    """TIES (Yadav et al., 2023) with one task vector: keep the top ``density`` of |δ| per tensor, add
    ``scale`` times it to θ0 (sign election is trivial with one model)."""

    name = "ties"

    def __init__(self, density: float = 0.2, scale: float = 1.0):
        check_number("merge.density", density, 0, 1, low_open=True)
        check_number("merge.scale", scale, 0, low_open=True)
        self.density, self.scale = density, scale

    def merge(self, name, theta0, theta_ft):
        return theta0 + merge_utils.ties([theta_ft - theta0], torch.tensor([self.scale]), self.density)
