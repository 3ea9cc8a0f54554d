"""Regularisers that pull the weights toward θ0, applied as their exact gradient before the step.

* ``l1_sp`` / ``l2_sp``: λ · mean over tensors of mean(|θ − θ0|) (resp. mean((θ − θ0)²)), the SPIDER
  authors' form (``reduction: tensor_mean``), or the survey's L2-SP (λ/2)·Σ‖θ − θ0‖²
  (``reduction: sum``; λ · Σ|θ − θ0| for L1).
* ``ewc``: (λ/2) · Σ F · (θ − θ0)², F = diagonal empirical Fisher at θ0: the mean over N batches of
  UPSTREAM training data of the squared gradient of the loss, computed once before training.

The penalty's gradient is elementwise in θ − θ0 (λ F (θ − θ0) for EWC), so it is added to each
rank's part of the reduced gradient directly, with no autograd graph over the parameters: the same
arithmetic on every engine, sharded or not. Its value is logged as ``strategy/penalty``.
"""

from __future__ import annotations

import logging

import torch

from mllmft.checks import check_number
from mllmft.errors import ConfigError
from mllmft.strategies.core import tensor_stats
from mllmft.strategies.core.contract import TuningStrategy, tensor_nbytes
from mllmft.strategies.core.theta0 import Theta0

log = logging.getLogger(__name__)
REDUCTIONS = ("tensor_mean", "sum")


class _AnchoredStrategy(TuningStrategy):
    captures_weights = True

    def __init__(self):
        self.theta0 = Theta0()

    def capture(self, weights) -> None:
        self.theta0.capture(weights)

    def start(self, ctx) -> None:
        self.theta0.place(ctx.fragments)

    # what a subclass defines: the penalty's gradient and its per-tensor terms (summed over the whole
    # tensors through the engine), and the logged penalty from those sums
    def penalty_gradient(self, f, delta: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def penalty_terms(self, f, delta: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def penalty(self, totals: torch.Tensor, fragments) -> float:
        raise NotImplementedError

    def before_step(self, ctx) -> None:
        terms = []
        for f in ctx.fragments:
            delta = f.values().float() - self.theta0[f.name].float()
            if ctx.logging:
                terms.append(self.penalty_terms(f, delta))
            grad = f.grad()
            if grad is not None:  # a tensor without gradient never moved from θ0: its penalty is 0
                grad.add_(self.penalty_gradient(f, delta).to(grad.dtype))
        if ctx.logging:
            ctx.log({"strategy/penalty": self.penalty(tensor_stats.totals(ctx.engine, terms), ctx.fragments)})

    def state_nbytes(self) -> int:
        return self.theta0.nbytes()


class AnchorPenalty(_AnchoredStrategy):
    """L1-SP / L2-SP toward θ0 (``norm``: l1 or l2)."""

    def __init__(self, norm: str = "l2", lam: float = 1e-3, reduction: str = "tensor_mean"):
        if norm not in ("l1", "l2") or reduction not in REDUCTIONS:
            raise ConfigError(f"strategy norm={norm!r}, reduction={reduction!r}: expected l1|l2 and {REDUCTIONS}")
        check_number("strategy.lam", lam, 0)
        super().__init__()
        self.norm, self.lam, self.reduction = norm, lam, reduction

    def penalty_gradient(self, f, delta: torch.Tensor) -> torch.Tensor:
        d = delta.sign() if self.norm == "l1" else delta
        if self.reduction == "sum":
            return d * self.lam  # ∂ λΣ|d| = λ sign(d); ∂ (λ/2)Σd² = λ d
        tensors = len(self.theta0.parts)
        return d * ((1.0 if self.norm == "l1" else 2.0) * self.lam / (tensors * f.numel))  # ∂ λ/T Σ_t mean_t

    def penalty_terms(self, f, delta: torch.Tensor) -> torch.Tensor:
        return delta.abs() if self.norm == "l1" else delta.square()

    def penalty(self, totals: torch.Tensor, fragments) -> float:
        if self.reduction == "sum":
            return float(totals.sum()) * self.lam * (0.5 if self.norm == "l2" else 1.0)
        means = [t / f.numel for t, f in zip(totals.tolist(), fragments)]
        return self.lam * sum(means) / max(1, len(means))


class EWC(_AnchoredStrategy):
    """Elastic weight consolidation: loss + λ/2 · Σ F (θ − θ0)², F the diagonal Fisher of the base model
    on the upstream data (``fisher_batches`` batches of ``fisher_split``), measured once at the start."""

    def __init__(
        self,
        lam: float = 1.0,
        fisher_batches: int = 8,
        fisher_split: str = "train",
        fisher_batch_size: int | None = None,
    ):
        check_number("strategy.lam", lam, 0)
        check_number("strategy.fisher_batches", fisher_batches, 1, integer=True)
        if fisher_batch_size is not None:
            check_number("strategy.fisher_batch_size", fisher_batch_size, 1, integer=True)
        super().__init__()
        self.lam = lam
        self.fisher_batches = fisher_batches
        self.fisher_split = fisher_split
        self.fisher_batch_size = fisher_batch_size
        self.fisher: dict[str, torch.Tensor] = {}  # fp32, beside each fragment

    def check_training(self, cfg) -> None:
        if not cfg.data.get("upstream"):
            raise ConfigError(
                f"strategy={self.name} estimates its Fisher on the upstream data, and data.upstream is empty: "
                "add an upstream set or choose another strategy"
            )

    def start(self, ctx) -> None:
        super().start(ctx)
        if self.fisher:  # restored from a checkpoint
            self.fisher = {f.name: self.fisher[f.name].to(f.values().device) for f in ctx.fragments}
        else:
            self.fisher = self.estimate_fisher(ctx)

    def estimate_fisher(self, ctx) -> dict[str, torch.Tensor]:
        """F = mean over ``fisher_batches`` upstream batches of g², g the batch gradient (averaged over
        the data-parallel ranks, as a training step's is) at θ0, with the model in eval mode."""
        module, model = ctx.module, ctx.module.model
        assert ctx.upstream_batches is not None, "check_training refused EWC without upstream data"
        loader = ctx.upstream_batches(self.fisher_split, self.fisher_batch_size)
        fisher = {f.name: torch.zeros(f.size, dtype=torch.float32, device=f.values().device) for f in ctx.fragments}
        was_training = model.training
        model.eval()
        batches = 0
        for batch in loader:
            if batches == self.fisher_batches:
                break
            batch = module.transfer_batch_to_device(batch, module.device, 0)
            loss = model(**batch["model_inputs"], labels=batch["labels"]).loss
            for f, grad in zip(ctx.fragments, ctx.engine.gradients(loss, ctx.fragments)):
                if grad is not None:
                    fisher[f.name].addcmul_(grad.float(), grad.float())
            batches += 1
        model.train(was_training)
        log.info("EWC: diagonal Fisher from %d upstream batches", batches)
        return {name: total.div_(max(1, batches)) for name, total in fisher.items()}

    def penalty_gradient(self, f, delta: torch.Tensor) -> torch.Tensor:
        return delta * self.fisher[f.name] * self.lam  # ∂ (λ/2)ΣF d² = λ F d

    def penalty_terms(self, f, delta: torch.Tensor) -> torch.Tensor:
        return delta.square() * self.fisher[f.name]

    def penalty(self, totals: torch.Tensor, fragments) -> float:
        return 0.5 * self.lam * float(totals.sum())

    def state_nbytes(self) -> int:
        return super().state_nbytes() + tensor_nbytes(self.fisher)

    def state_dict(self) -> dict:
        return {"fisher": self.fisher}

    def load_state_dict(self, state: dict) -> None:
        self.fisher = dict(state.get("fisher", {}))
