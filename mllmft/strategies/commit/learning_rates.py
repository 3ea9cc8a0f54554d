"""Per-side learning rates on top of the base schedule: the encoder side's and the LLM side's
parameter groups get multipliers chosen each step by a rule (CoMMIT's κ rule, coordinate descent).

The multipliers are applied to the lrs the schedule set for the step, before the step; the schedule
recomputes every lr from its base lrs at its next step, so it never sees them and they never compound.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mllmft.checks import check_number
from mllmft.errors import ConfigError


def check_lr_bounds(bounds: Sequence) -> tuple[float, float]:
    """``strategy.lr_bounds``: [low, high], the multipliers' clip range, with 0 <= low <= 1 <= high."""
    if isinstance(bounds, str) or not isinstance(bounds, Sequence) or len(bounds) != 2:
        raise ConfigError(f"strategy.lr_bounds={bounds!r}; expected two numbers [low, high]")
    check_number("strategy.lr_bounds[0]", bounds[0], 0, 1)
    check_number("strategy.lr_bounds[1]", bounds[1], 1)
    return bounds[0], bounds[1]


def check_coordinate_descent(period: int, share: float) -> None:
    """``strategy.cd_period`` steps per cycle, ``strategy.cd_share`` of them the favoured side's: both sides
    get steps."""
    check_number("strategy.cd_period", period, 2, integer=True)
    check_number("strategy.cd_share", share, 0, 1, low_open=True, high_open=True)
    if not 0 < round(share * period) < period:
        raise ConfigError(
            f"strategy.cd_share={share} of strategy.cd_period={period} steps leaves one side no step; "
            "expected a share giving both sides steps"
        )


class KappaRule:
    """CoMMIT's scheduler (reconstruction): encoder × clip(2(1 − κ), low, high), LLM × clip(2κ, low,
    high); κ = ½ leaves both at the base schedule, the side that moved less gets the larger step."""

    def __init__(self, monitor, low: float = 0.5, high: float = 2.0):
        self.monitor = monitor
        self.low, self.high = check_lr_bounds((low, high))

    def __call__(self, step: int) -> dict[str, float]:
        kappa = self.monitor.kappa
        return {
            "encoder": min(max(2 * (1 - kappa), self.low), self.high),
            "llm": min(max(2 * kappa, self.low), self.high),
        }


class CoordinateDescentRule:
    """Coordinate descent between the sides: in every cycle of ``period`` steps the ``favoured`` side
    trains alone for the first round(share × period) steps, the other side alone for the rest."""

    def __init__(self, favoured: str, period: int = 4, share: float = 0.75):
        assert favoured in ("encoder", "llm"), favoured  # chosen by strategy.lr_rule, not given
        check_coordinate_descent(period, share)
        self.favoured, self.period, self.share = favoured, period, share

    def __call__(self, step: int) -> dict[str, float]:
        favoured_turn = step % self.period < round(self.share * self.period)
        other = "llm" if self.favoured == "encoder" else "encoder"
        active = self.favoured if favoured_turn else other
        return {"encoder": float(active == "encoder"), "llm": float(active == "llm")}


class SideLearningRates:
    """Scale each parameter group's lr by its side's multiplier, from the strategy's ``before_step``:
    the lr of a step is the schedule's lr for it × the multiplier. The schedule sets every lr afresh
    from its base lrs at each of its steps, so multipliers never compound and the schedule never sees
    them. ``group_side(group_name)`` says which side a group (named after its component by
    ``param_groups``) is on."""

    def __init__(self, rule, group_side, log_every: int = 10):
        self.rule, self.group_side, self.log_every = rule, group_side, log_every
        self.last: dict[str, float] = {}  # group name -> lr actually used at the last step (logged)
        self.optimizer: torch.optim.Optimizer | None = None
        self._schedule = None
        self._constant: list[float] = []

    def start(self, ctx) -> None:
        assert ctx.optimizer is not None, "the optimizer exists once training starts"
        self.optimizer = ctx.optimizer
        self._schedule = ctx.scheduler
        self._constant = [g["lr"] for g in self.optimizer.param_groups]  # without a schedule

    def before_step(self, ctx) -> None:
        scheduled = self._schedule.get_last_lr() if self._schedule is not None else self._constant
        multipliers = self.rule(ctx.step)
        assert self.optimizer is not None, "before_step ran before start"
        for group, lr in zip(self.optimizer.param_groups, scheduled):
            name = group.get("name", "")
            group["lr"] = self.last[name] = lr * multipliers[self.group_side(name)]
        if ctx.step % self.log_every == 0:
            ctx.log_now({f"commit/lr/{name}": lr for name, lr in self.last.items()}, ctx.step)
