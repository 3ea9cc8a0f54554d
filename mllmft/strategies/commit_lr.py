"""Per-side learning rates on top of the base schedule: the encoder side's and the LLM side's
parameter groups get multipliers chosen each step by a rule (CoMMIT's κ rule, coordinate descent).

The multipliers are applied in an optimizer step pre-hook and undone in its post-hook, so the base
schedule (whatever scheduler sets it, cumulative or not) never sees them and they never compound.
"""

from __future__ import annotations

import torch
from lightning import Callback

from mllmft.errors import ConfigError
from mllmft.strategies.commit_balance import log_now


class KappaRule:
    """CoMMIT's scheduler (reconstruction): encoder × clip(2(1 − κ), low, high), LLM × clip(2κ, low,
    high); κ = ½ leaves both at the base schedule, the side that moved less gets the larger step."""

    def __init__(self, monitor, low: float = 0.5, high: float = 2.0):
        if not 0.0 <= low <= 1.0 <= high:
            raise ConfigError(f"strategy.lr_bounds=[{low}, {high}] must satisfy 0 <= low <= 1 <= high")
        self.monitor, self.low, self.high = monitor, low, high

    def __call__(self, step: int) -> dict[str, float]:
        kappa = self.monitor.kappa
        return {"encoder": min(max(2 * (1 - kappa), self.low), self.high),
                "llm": min(max(2 * kappa, self.low), self.high)}


class CoordinateDescentRule:
    """Coordinate descent between the sides: in every cycle of ``period`` steps the ``favoured`` side
    trains alone for the first round(share × period) steps, the other side alone for the rest."""

    def __init__(self, favoured: str, period: int = 4, share: float = 0.75):
        if favoured not in ("encoder", "llm") or period < 2 or not 0 < round(share * period) < period:
            raise ConfigError(f"coordinate descent needs favoured in (encoder, llm), period >= 2 and a share "
                              f"giving both sides steps (got {favoured!r}, {period}, {share})")
        self.favoured, self.period, self.share = favoured, period, share

    def __call__(self, step: int) -> dict[str, float]:
        favoured_turn = step % self.period < round(self.share * self.period)
        other = "llm" if self.favoured == "encoder" else "encoder"
        active = self.favoured if favoured_turn else other
        return {"encoder": float(active == "encoder"), "llm": float(active == "llm")}


class SideLearningRates(Callback):
    """Scale each parameter group's lr by its side's multiplier. ``group_side(group_name)`` says which
    side a group (named after its component by ``param_groups``) is on."""

    def __init__(self, rule, group_side, log_every: int = 10):
        self.rule, self.group_side, self.log_every = rule, group_side, log_every
        self.last: dict[str, float] = {}  # group name -> lr actually used at the last step (logged)
        self._handles: list = []
        self._base: list[float] = []
        self._step = 0

    def on_train_start(self, trainer, pl_module) -> None:
        for optimizer in trainer.optimizers:
            optimizer = torch_optimizer(optimizer)
            self._handles += [optimizer.register_step_pre_hook(self._scale),
                              optimizer.register_step_post_hook(self._restore)]

    def on_train_end(self, trainer, pl_module) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step = trainer.global_step

    def _scale(self, optimizer, args, kwargs) -> None:
        multipliers = self.rule(self._step)
        self._base = [g["lr"] for g in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * multipliers[self.group_side(group.get("name", ""))]
            self.last[group.get("name", "")] = group["lr"]

    def _restore(self, optimizer, args, kwargs) -> None:
        for group, lr in zip(optimizer.param_groups, self._base):
            group["lr"] = lr

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (trainer.global_step - 1) % self.log_every == 0 and self.last:
            log_now(trainer, {f"commit/lr/{name}": lr for name, lr in self.last.items()}, trainer.global_step - 1)


def torch_optimizer(optimizer) -> torch.optim.Optimizer:
    """The torch optimizer that takes the step: DeepSpeed's ZeRO optimizers wrap one (over their flat
    partitions, with the same parameter groups)."""
    while not isinstance(optimizer, torch.optim.Optimizer) and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer

