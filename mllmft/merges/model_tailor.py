"""Model Tailor (Zhu et al., ICML 2024): keep a small "patch" of the task vector, compensate for the
rest on calibration data, reset the projector.

For every fine-tuned linear of the LLM's decoder blocks, in block order (each block's inputs come
from the blocks already merged before it, as in SparseGPT):

1. H = XᵀX / n, X the linear's inputs over ``samples`` target training samples, damped by ``damp``
   times its mean diagonal; U = the upper Cholesky factor of H⁻¹ (SparseGPT's form).
2. For each block of ``block`` input columns of δ = θ_ft − θ0 (as compensated so far): the score
   ``salience``·z(|δ|) + (1 − ``salience``)·z(δ²/U_jj²), z a z-score per row inside the block; the
   patch is exactly round(``patch`` · entries) highest-scoring entries of the block.
3. Column by column, δ off the patch is dropped (back to θ0) and its output error, measured on H, is
   moved onto the columns not yet processed (SparseGPT's update); the merged weight is θ0 + δ' with
   δ' exactly zero off the patch.

The spec's sensitivity W²/[H⁻¹]²_jj is read with W = δ: what is removed is the change, and the OBS
cost of removing an entry is its value squared over U_jj² (as SparseGPT scores a weight it prunes).
Inputs are counted at every position of a batch, padding included. The connector is reset to θ0;
every other fine-tuned tensor (vision tower, embeddings, norms, biases, head) keeps its ``patch``
share of largest |δ| (salience only: it has no single input covariance).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from mllmft.checks import check_number
from mllmft.console import progress
from mllmft.hardware import on_compute_device
from mllmft.merges.base import FinetunedWeights, MergeMethod
from mllmft.merges.calibration import target_batches
from mllmft.strategies.core.tensor_stats import highest_entries

if TYPE_CHECKING:
    from mllmft.backbones import Backbone, ComponentMap
    from mllmft.data import MLLMDataModule


def row_z(x: torch.Tensor) -> torch.Tensor:
    """z-score of each entry within its row (0 where a row is constant)."""
    std, mean = torch.std_mean(x, dim=1, keepdim=True, correction=0)
    return (x - mean) / std.clamp_min(torch.finfo(x.dtype).tiny)


def damped_inverse_factor(covariance: torch.Tensor, damp: float) -> torch.Tensor:
    """U upper triangular with UᵀU = (H + λI)⁻¹, λ = damp · mean diag H; an input that is always zero
    gets H_jj = 1 (its column of δ cannot change the output)."""
    h = covariance.double().clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    h.diagonal().add_(damp * h.diagonal().mean())
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True).float()


@torch.no_grad()
def tailor_patch(
    delta: torch.Tensor,
    covariance: torch.Tensor,
    patch: float = 0.1,
    block: int = 128,
    salience: float = 0.8,
    damp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(δ', keep) for one linear: δ' is zero off ``keep``, which holds exactly round(patch · entries) of
    each ``block``-column block; δ' compensates on ``covariance`` for what was dropped."""
    w = delta.float().clone()
    u = damped_inverse_factor(covariance, damp).to(w.device)
    keep = torch.zeros_like(w, dtype=torch.bool)
    for start in range(0, w.shape[1], block):
        end = min(start + block, w.shape[1])
        w1, u1 = w[:, start:end].clone(), u[start:end, start:end]
        d = u1.diagonal()
        score = salience * row_z(w1.abs()) + (1 - salience) * row_z(w1.square() / d.square())
        keep1 = highest_entries(score, patch)
        errors = torch.zeros_like(w1)
        for i in range(end - start):
            column = w1[:, i]
            dropped = torch.where(keep1[:, i], 0.0, column)
            error = dropped / d[i]
            w1[:, i:] -= error[:, None] * u1[i, i:][None, :]
            w1[:, i] = torch.where(keep1[:, i], w1[:, i], 0.0)  # exactly zero, whatever the rounding
            errors[:, i] = error
        w[:, start:end] = w1
        w[:, end:] -= errors @ u[start:end, end:]
        keep[:, start:end] = keep1
    return w, keep


class _StopForward(Exception):
    """Raised after the block being calibrated: the rest of the model is not needed."""


@torch.no_grad()
def input_covariances(
    model: nn.Module, block: nn.Module, linears: dict[str, nn.Linear], batches: list[dict]
) -> dict[str, torch.Tensor]:
    """XᵀX / n of each linear's inputs (fp32), running the model only as far as ``block``."""
    sums = {name: torch.zeros(m.in_features, m.in_features, device=m.weight.device) for name, m in linears.items()}
    counts = dict.fromkeys(linears, 0)

    def collect(name):
        def hook(module, args):
            x = args[0].detach().reshape(-1, module.in_features).float()
            sums[name].addmm_(x.T, x)
            counts[name] += x.shape[0]

        return hook

    def stop(module, args, output):
        raise _StopForward

    handles = [m.register_forward_pre_hook(collect(name)) for name, m in linears.items()]
    handles.append(block.register_forward_hook(stop))
    try:
        for batch in batches:
            try:
                model(**batch["model_inputs"])
            except _StopForward:
                pass
    finally:
        for handle in handles:
            handle.remove()
    return {name: total / max(1, counts[name]) for name, total in sums.items()}


class ModelTailor(MergeMethod):
    """Model Tailor (Zhu et al., 2024): per LLM linear, a ``patch`` share of δ chosen by salience and
    sensitivity, then an OBS-style compensation of the rest from the target inputs' covariance."""

    name = "model_tailor"
    calibrates = True

    def __init__(
        self, patch: float = 0.1, block: int = 128, samples: int = 128, salience: float = 0.8, damp: float = 0.01
    ):
        check_number("merge.patch", patch, 0, 1, low_open=True)
        check_number("merge.block", block, 1, integer=True)
        check_number("merge.samples", samples, 1, integer=True)
        check_number("merge.salience", salience, 0, 1)
        check_number("merge.damp", damp, 0, low_open=True)
        self.patch, self.block, self.samples, self.salience, self.damp = patch, block, samples, salience, damp
        self.keep_masks: dict[str, torch.Tensor] = {}  # the patch of each compensated linear
        self.written: set[str] = set()
        self._components: ComponentMap | None = None

    def prepare(self, backbone: Backbone, datamodule: MLLMDataModule, finetuned: FinetunedWeights) -> None:
        model, components = backbone.model, backbone.components
        self._components = components
        blocks = model.get_submodule(components.layers["llm"])
        with on_compute_device(model) as device:
            batches = target_batches(datamodule, "train", self.samples, device, "merge=model_tailor")
            for index, block in enumerate(progress(blocks, "Model Tailor", len(blocks), min_total=1)):
                prefix = f"{components.layers['llm']}.{index}."
                linears = {
                    prefix + n: m
                    for n, m in block.named_modules()
                    if isinstance(m, nn.Linear) and finetuned.get(f"{prefix}{n}.weight") is not None
                }
                if not linears:
                    continue
                covariances = input_covariances(model, block, linears, batches)
                for name, linear in linears.items():
                    theta0 = linear.weight.detach().float()
                    delta = finetuned.tensors[f"{name}.weight"].to(device).float() - theta0
                    patched, keep = tailor_patch(
                        delta, covariances[name], self.patch, self.block, self.salience, self.damp
                    )
                    linear.weight.copy_((theta0 + patched).to(linear.weight.dtype))  # the next blocks see it
                    self.written.add(f"{name}.weight")
                    self.keep_masks[f"{name}.weight"] = keep.cpu()

    def merge(self, name, theta0, theta_ft):
        if self._components.component_of(name) == "connector":
            return theta0
        delta = theta_ft - theta0
        return theta0 + delta * highest_entries(delta.abs(), self.patch)
