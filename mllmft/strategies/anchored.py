"""Regularisers that pull the weights toward θ0, in the same backward as the task loss.

* ``l1_sp`` / ``l2_sp``: λ · mean over tensors of mean(|θ − θ0|) (resp. mean((θ − θ0)²)), the SPIDER
  authors' form (``reduction: tensor_mean``), or the survey's L2-SP (λ/2)·Σ‖θ − θ0‖²
  (``reduction: sum``; λ · Σ|θ − θ0| for L1).
* ``ewc``: (λ/2) · Σ F · (θ − θ0)², F = diagonal empirical Fisher at θ0: the mean over N batches of
  UPSTREAM training data of the squared gradient of the loss, computed once before training.
"""

from __future__ import annotations

import logging

import torch
from lightning import Callback

from mllmft.backbones import Backbone
from mllmft.callbacks.anchor import Anchor
from mllmft.callbacks.importance import ImportanceAccumulator
from mllmft.checks import check_number
from mllmft.errors import ConfigError
from mllmft.strategies.base import TuningStrategy

log = logging.getLogger(__name__)
REDUCTIONS = ("tensor_mean", "sum")


class _AnchoredStrategy(TuningStrategy):
    needs_whole_parameters = True

    def attach(self, backbone: Backbone) -> None:
        self.anchor = Anchor(backbone.model)
        self._placed = False

    def state_nbytes(self) -> int:
        return self.anchor.nbytes()

    def _anchored(self, module):
        if not self._placed:  # once the trainer has placed (and possibly cast) the model
            self.anchor.follow(module.model)
            self._placed = True
        return self.anchor.named(module.model)


class AnchorPenalty(_AnchoredStrategy):
    """L1-SP / L2-SP toward θ0 (``norm``: l1 or l2)."""

    def __init__(self, norm: str = "l2", lam: float = 1e-3, reduction: str = "tensor_mean"):
        if norm not in ("l1", "l2") or reduction not in REDUCTIONS:
            raise ConfigError(f"strategy norm={norm!r}, reduction={reduction!r}: expected l1|l2 and {REDUCTIONS}")
        check_number("strategy.lam", lam, 0)
        self.norm, self.lam, self.reduction = norm, lam, reduction
        self.name = f"{norm}_sp"

    def extra_loss(self, module, batch, outputs) -> torch.Tensor:
        terms = []
        for _, p, theta0 in self._anchored(module):
            d = p - theta0
            d = d.abs() if self.norm == "l1" else d.square()
            terms.append(d.float().mean() if self.reduction == "tensor_mean" else d.float().sum())
        total = torch.stack(terms)
        if self.reduction == "tensor_mean":
            return self.lam * total.mean()
        return self.lam * total.sum() * (0.5 if self.norm == "l2" else 1.0)


class _UpstreamFisher(Callback):
    """Before the first step: F = mean over N upstream batches of g² at θ0 (all ranks averaged)."""

    def __init__(self, ewc: EWC):
        self.ewc = ewc

    def on_train_start(self, trainer, pl_module) -> None:
        fisher = self.ewc.fisher
        if fisher.steps > 0:  # restored from a checkpoint
            return
        model = pl_module.model
        names, params = zip(*((n, p) for n, p in model.named_parameters() if p.requires_grad))
        loader = trainer.datamodule.upstream_train_dataloader(self.ewc.fisher_split, self.ewc.fisher_batch_size)
        was_training = model.training
        model.eval()
        for i, batch in enumerate(loader):
            if i == self.ewc.fisher_batches:
                break
            batch = pl_module.transfer_batch_to_device(batch, pl_module.device, 0)
            loss = model(**batch["model_inputs"], labels=batch["labels"]).loss
            # autograd.grad, not backward: DDP's gradient hooks must not fire outside a training step
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            fisher.accumulate(zip(names, grads))
        model.train(was_training)
        for name, total in fisher.state["sq"].items():
            fisher.state["sq"][name] = trainer.strategy.reduce(total / fisher.steps, reduce_op="mean")
        log.info("EWC: diagonal Fisher from %d upstream batches", fisher.steps)


class EWC(_AnchoredStrategy):
    name = "ewc"

    def __init__(self, lam: float = 1.0, fisher_batches: int = 8, fisher_split: str = "train",
                 fisher_batch_size: int | None = None):
        check_number("strategy.lam", lam, 0)
        check_number("strategy.fisher_batches", fisher_batches, 1, integer=True)
        if fisher_batch_size is not None:
            check_number("strategy.fisher_batch_size", fisher_batch_size, 1, integer=True)
        self.lam = lam
        self.fisher_batches = fisher_batches
        self.fisher_split = fisher_split
        self.fisher_batch_size = fisher_batch_size

    def attach(self, backbone: Backbone) -> None:
        super().attach(backbone)
        self.fisher = ImportanceAccumulator(stats=("sq",), window_steps=0)  # filled once, not per step

    def state_nbytes(self) -> int:
        return self.anchor.nbytes() + self.fisher.nbytes()

    def extra_loss(self, module, batch, outputs) -> torch.Tensor:
        terms = [(self.fisher.state["sq"][name] * (p - theta0).float().square()).sum()
                 for name, p, theta0 in self._anchored(module) if name in self.fisher.state["sq"]]
        return 0.5 * self.lam * torch.stack(terms).sum()

    def callbacks(self):
        return [self.fisher, _UpstreamFisher(self)]
