"""CoMMIT (Wu, Li et al., "Coordinated Multimodal Instruction Tuning") and its baselines — a
reconstruction from what the paper states (its equations and code are not available).

The model is split into an *encoder side* (vision encoder + connector by default) and the *LLM
side* by the component map. A ``BalanceMonitor`` measures κ_t every K steps; the learning-rate rule
turns κ (or a coordinate-descent timetable) into per-side multipliers on the base schedule; the
auxiliary term L_total = L_CE − λ·KL(P_θ ‖ stopgrad(P_ref)) rewards moving away from the reference
distribution (the parameters of the previous measurement, on the current batch), applied on
measurement steps. Any other strategy (``base``: full fine-tuning by default, LoRA in the paper's
setting) decides how each side's trainable parameters are updated.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightning import Callback

from mllmft.backbones import COMPONENTS, Backbone
from mllmft.checks import check_number
from mllmft.errors import ConfigError
from mllmft.strategies.baselines.full import FullFineTuning
from mllmft.strategies.commit.balance import BalanceMonitor, answer_kl
from mllmft.strategies.commit.learning_rates import (
    CoordinateDescentRule,
    KappaRule,
    SideLearningRates,
    check_coordinate_descent,
    check_lr_bounds,
)
from mllmft.strategies.core.contract import TuningStrategy

LR_RULES = ("kappa", "constant", "feature_cd", "language_cd")


class CoMMIT(TuningStrategy):
    """``lr_rule``: ``kappa`` (CoMMIT; CoMMIT-CLR when ``aux_lambda`` = 0), ``constant`` (κ logged,
    no scheduling), ``feature_cd`` / ``language_cd`` (coordinate descent favouring the encoder / LLM)."""

    def __init__(
        self,
        base: TuningStrategy | None = None,
        every_k: int = 10,
        ema: float = 0.9,
        lr_rule: str = "kappa",
        lr_bounds: Sequence[float] = (0.5, 2.0),
        aux_lambda: float = 0.0,
        encoder_side: Sequence[str] = ("vision", "connector"),
        cd_period: int = 4,
        cd_share: float = 0.75,
    ):
        if lr_rule not in LR_RULES:
            raise ConfigError(f"strategy.lr_rule={lr_rule!r}; expected one of {LR_RULES}")
        if set(encoder_side) - set(COMPONENTS) or "llm" in encoder_side:
            raise ConfigError(f"strategy.encoder_side={list(encoder_side)} must name vision and/or connector")
        check_number("strategy.aux_lambda", aux_lambda, 0)
        # every knob, whichever rule uses it: a bad one is a mistake even where this rule ignores it
        check_lr_bounds(lr_bounds)
        check_coordinate_descent(cd_period, cd_share)
        self.base = base or FullFineTuning()
        self.encoder_side = tuple(encoder_side)
        self.aux_lambda = aux_lambda
        self.monitor = BalanceMonitor(every_k, ema, keep_reference=aux_lambda > 0)
        rule: KappaRule | CoordinateDescentRule | None
        if lr_rule == "kappa":
            rule = KappaRule(self.monitor, *lr_bounds)
        elif lr_rule in ("feature_cd", "language_cd"):
            rule = CoordinateDescentRule("encoder" if lr_rule == "feature_cd" else "llm", cd_period, cd_share)
        else:
            rule = None
        self.side_lr = rule and SideLearningRates(rule, self._group_side, log_every=every_k)
        self.writes_weights = self.base.writes_weights
        self.captures_weights = self.base.captures_weights

    def check_training(self, cfg) -> None:
        self.monitor.check_accumulation(cfg.trainer.get("accumulate_grad_batches", 1))
        self.base.check_training(cfg)

    def _group_side(self, group_name: str) -> str:
        return "encoder" if group_name.split(".")[0] in self.encoder_side else "llm"

    def attach(self, backbone: Backbone) -> None:
        self.base.attach(backbone)
        cmap = backbone.components
        self.monitor.sides = {
            n: "encoder" if cmap.component_of(n) in self.encoder_side else "llm"
            for n, p in backbone.model.named_parameters()
            if p.requires_grad
        }
        missing = {"encoder", "llm"} - set(self.monitor.sides.values())
        if missing:
            raise ConfigError(
                f"strategy={self.name} balances the encoder side {list(self.encoder_side)} against "
                f"the LLM, but the scope leaves no {missing.pop()}-side parameter trainable; use "
                "a scope that trains both (e.g. scope=connector_llm)"
            )

    def callbacks(self) -> list[Callback]:
        return self.base.callbacks()

    # the base strategy's hooks, then the measurement around each step
    def capture(self, weights) -> None:
        self.base.capture(weights)

    def start(self, ctx) -> None:
        self.monitor.check_accumulation(ctx.accumulate_grad_batches)
        self.base.start(ctx)
        if self.side_lr:
            self.side_lr.start(ctx)

    def before_batch(self, ctx, batch: dict) -> None:
        self.base.before_batch(ctx, batch)
        self.monitor.before_batch(ctx, batch)

    def before_step(self, ctx) -> None:
        self.base.before_step(ctx)
        if self.side_lr:
            self.side_lr.before_step(ctx)

    def after_step(self, ctx) -> None:
        self.base.after_step(ctx)

    def after_batch(self, ctx, batch: dict) -> None:
        self.base.after_batch(ctx, batch)
        self.monitor.after_batch(ctx, batch)

    def finish(self, ctx) -> None:
        self.base.finish(ctx)
        self.monitor.finish(ctx)

    def extra_loss(self, module, batch: dict, outputs) -> torch.Tensor | None:
        base = self.base.extra_loss(module, batch, outputs)
        reference = self.monitor.reference_log_probs
        if self.aux_lambda == 0 or reference is None:
            return base
        kl = answer_kl(outputs.tokens.log_probs(), reference)
        module.log("commit/aux_kl", kl.detach(), batch_size=len(batch["ids"]))
        aux = -self.aux_lambda * kl
        return aux if base is None else base + aux

    def state_nbytes(self) -> int:
        return self.base.state_nbytes()

    def state_dict(self) -> dict:
        return {"base": self.base.state_dict(), "monitor": self.monitor.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.base.load_state_dict(state.get("base", {}))
        if "monitor" in state:
            self.monitor.load_state_dict(state["monitor"])
