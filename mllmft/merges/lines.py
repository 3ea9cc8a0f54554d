"""LiNeS (Wang et al., ICLR 2025, arXiv 2410.17146; the authors' code: wang-kee/LiNeS): post-training layer
scaling. The task vector δ = θ_ft − θ0 of each residual block is scaled by how deep the block is, so the
shallow blocks, which hold the general features, stay near θ0 and the deep ones keep their update:

    θ = θ0 + λ(ℓ) · δ,   λ(ℓ) = α + β · ℓ / (L − 1),   ℓ = 0 … L − 1 the block's depth,

and every tensor outside the blocks (embeddings, norms, heads) is scaled by α, as in the authors'
``LiNeS_scaling``. The single-task setting (one fine-tuned model, mllmft-merge's) takes β = 1 − α: the
deepest block keeps its whole update, the first keeps α of it.

The choices where the paper is silent (its models are single-tower ViTs and one text encoder): an MLLM has
a layer list per component (the vision tower's blocks, the LLM's decoder layers; ``ComponentMap.layers``),
and each is scaled by its own depth, from α at its first block to 1 at its last; the connector (the
projector, outside every block) gets α, as the authors' rule for tensors outside the blocks says. A list
of one block keeps its whole update. The multi-task form (LiNeS on top of TIES or a sum of several task
vectors) needs several fine-tuned models, which mllmft-merge does not take.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from mllmft.checks import check_number
from mllmft.merges.base import FinetunedWeights, MergeMethod

if TYPE_CHECKING:
    from mllmft.backbones import Backbone
    from mllmft.data import MLLMDataModule


def depth_scales(backbone: Backbone, alpha: float) -> dict[str, float]:
    """{parameter name: λ(ℓ)} for every parameter inside a block of a component's layer list."""
    scales: dict[str, float] = {}
    names = [n for n, _ in backbone.model.named_parameters()]
    for path in backbone.components.layers.values():
        blocks = len(backbone.model.get_submodule(path))
        for depth in range(blocks):
            # min: α + (1 − α) rounds above 1 (0.2 + 0.8); the deepest block's update is kept exactly
            scale = 1.0 if blocks == 1 else min(1.0, alpha + (1 - alpha) * depth / (blocks - 1))
            prefix = f"{path}.{depth}."
            scales.update({n: scale for n in names if n.startswith(prefix)})
    return scales


class LiNeS(MergeMethod):
    """θ0 + λ(ℓ)·δ, λ rising linearly with the block's depth from ``alpha`` to 1 (α outside the blocks)."""

    name = "lines"

    def __init__(self, alpha: float = 0.5):
        check_number("merge.alpha", alpha, 0, 1)
        self.alpha = alpha
        self.scales: dict[str, float] = {}

    def prepare(self, backbone: Backbone, datamodule: MLLMDataModule, finetuned: FinetunedWeights) -> None:
        self.scales = depth_scales(backbone, self.alpha)

    def merge(self, name: str, theta0: torch.Tensor, theta_ft: torch.Tensor) -> torch.Tensor:
        return torch.lerp(theta0, theta_ft, self.scales.get(name, self.alpha))
