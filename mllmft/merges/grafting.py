"""Grafting (Panigrahi et al., ICML 2023, "skill localization"): learn which few entries of the task
vector carry the task, keep only those.

θ(S) = θ0 + σ(S) ⊙ δ with δ = θ_ft − θ0 and one real score S per entry of every fine-tuned tensor.
S starts at +``bias`` on each tensor's top-``sparsity`` |δ| entries and −``bias`` elsewhere (σ(±10)
is 1 or 0 to 5 digits), then takes ``steps`` plain gradient steps of the task loss on the target's
training batches (∂loss/∂S = g ⊙ δ ⊙ σ'(S); σ' is ~4.5e-5 at ±10, hence the large ``lr``). Every
``round_every`` steps the mask is rounded, exactly round(``sparsity`` · numel) highest S of each tensor
(the paper's count, per tensor here), and the rounded model's loss is measured on the target's
validation batches (its training batches if it has none); the best rounded mask, the starting one
included, is the result: θ = θ0 + γ ⊙ δ, exactly θ_ft on γ and θ0 elsewhere.

Memory: beside θ_ft, the grafted tensors' θ0, δ and S in fp32 (and a gradient) on the compute device.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from mllmft.checks import check_number
from mllmft.console import progress
from mllmft.errors import ConfigError
from mllmft.hardware import on_compute_device
from mllmft.merges.base import FinetunedWeights, MergeMethod
from mllmft.merges.calibration import batch_loss, target_batches
from mllmft.strategies.core.tensor_stats import highest_entries

if TYPE_CHECKING:
    from mllmft.backbones import Backbone
    from mllmft.data import MLLMDataModule

log = logging.getLogger(__name__)


def rounded(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    return {name: highest_entries(s, sparsity) for name, s in scores.items()}


class Grafting(MergeMethod):
    """Model grafting (Panigrahi et al., 2023): learn which ``sparsity`` share of δ to graft onto θ0 by
    gradient steps on a relaxed mask, on target training batches; keep the best rounded mask."""

    name = "grafting"
    calibrates = True

    def __init__(
        self,
        sparsity: float = 0.1,
        steps: int = 100,
        lr: float = 1e7,
        bias: float = 10.0,
        round_every: int = 20,
        samples: int = 128,
        eval_samples: int = 64,
    ):
        check_number("merge.sparsity", sparsity, 0, 1, low_open=True)
        check_number("merge.steps", steps, 0, integer=True)
        check_number("merge.lr", lr, 0, low_open=True)
        check_number("merge.bias", bias, 0, low_open=True)
        check_number("merge.round_every", round_every, 1, integer=True)
        check_number("merge.samples", samples, 1, integer=True)
        check_number("merge.eval_samples", eval_samples, 1, integer=True)
        self.sparsity, self.steps, self.lr, self.bias = sparsity, steps, lr, bias
        self.round_every, self.samples, self.eval_samples = round_every, samples, eval_samples
        self.masks: dict[str, torch.Tensor] = {}  # γ, bool, on the host
        self.best_step = 0  # the optimisation step of the kept mask (0: the top-|δ| start)
        self.moved = 0.0  # share of the kept mask's entries outside the start

    def prepare(self, backbone: Backbone, datamodule: MLLMDataModule, finetuned: FinetunedWeights) -> None:
        model = backbone.model
        # the tensors the run changed (an HF directory holds every tensor; δ = 0 has nothing to localise)
        params = {
            n: p
            for n, p in model.named_parameters()
            if (t := finetuned.get(n)) is not None and not torch.equal(t.to(p), p.detach())
        }
        with on_compute_device(model) as device:
            train = target_batches(datamodule, "train", self.samples, device, "merge=grafting")
            try:
                held_out = target_batches(datamodule, "val", self.eval_samples, device, "merge=grafting")
            except ConfigError:
                log.warning("merge=grafting: the target has no validation split; masks are chosen on training batches")
                held_out = train
            theta0 = {n: p.detach().clone() for n, p in params.items()}
            delta = {n: finetuned.tensors[n].to(device).float() - p.detach().float() for n, p in params.items()}
            start = rounded({n: d.abs() for n, d in delta.items()}, self.sparsity)
            scores = {n: torch.where(m, self.bias, -self.bias) for n, m in start.items()}

            def set_weights(gammas):
                with torch.no_grad():
                    for n, p in params.items():
                        p.copy_((theta0[n].float() + gammas[n] * delta[n]).to(p.dtype))

            def held_out_loss(masks) -> float:
                set_weights({n: m.float() for n, m in masks.items()})
                with torch.no_grad():
                    return sum(float(batch_loss(model, b)) for b in held_out) / len(held_out)

            best_loss, best = held_out_loss(start), start
            trainable = {n: p.requires_grad for n, p in params.items()}
            for p in params.values():
                p.requires_grad_(True)
            try:
                for step in progress(range(1, self.steps + 1), "Grafting", self.steps, min_total=1):
                    set_weights({n: torch.sigmoid(s) for n, s in scores.items()})
                    loss = batch_loss(model, train[(step - 1) % len(train)])
                    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
                    with torch.no_grad():
                        for (n, s), g in zip(scores.items(), grads):
                            if g is None:  # a tensor this loss does not reach (e.g. the vision tower's last norm)
                                continue
                            sig = torch.sigmoid(s)
                            s.sub_(self.lr * g.float() * delta[n] * sig * (1 - sig))
                    if step % self.round_every == 0 or step == self.steps:
                        masks = rounded(scores, self.sparsity)
                        candidate = held_out_loss(masks)
                        if candidate < best_loss:
                            best_loss, best, self.best_step = candidate, masks, step
            finally:
                for n, p in params.items():
                    p.requires_grad_(trainable[n])
                    p.data.copy_(theta0[n])  # the live model is θ0 again: merge_into writes the result
        kept = sum(int(m.sum()) for m in best.values())
        self.moved = sum(int((m & ~start[n]).sum()) for n, m in best.items()) / max(1, kept)
        self.masks = {n: m.cpu() for n, m in best.items()}
        log.info(
            "Grafting: mask of step %d (held-out loss %.4f), %.1f%% of it outside the top-|δ| start",
            self.best_step,
            best_loss,
            100 * self.moved,
        )

    def merge(self, name, theta0, theta_ft):
        mask = self.masks.get(name)  # None: a tensor the run left at θ0
        return theta0 if mask is None else torch.where(mask.to(theta0.device), theta_ft, theta0)
