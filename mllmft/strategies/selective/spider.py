"""SPIDER (Huang et al., ICML 2025): importance-discrepancy selective tuning. Selective method group.

Each weight has a pre-trained importance N(|θ0|) and a downstream importance N(|Σ g|), the running
signed sum of its gradients. After every step a weight keeps its update only where the downstream
importance beats the pre-trained one, scaled by how much (soft mask; ``mask=binary`` for the paper's
0/1 variant); elsewhere it is pulled back to θ0. No ratio is set by hand.

Every statistic is per tensor (N's mean and std, the mean of R over the entries that win), taken
from a few reduced scalars, so on a sharded engine each rank works on its own part of every tensor:
θ0 and Σ g live beside that part, 8 bytes per trainable parameter over N ranks (6 in bf16).
"""

from __future__ import annotations

import torch

from mllmft.checks import check_number
from mllmft.errors import ConfigError
from mllmft.strategies.core import tensor_stats
from mllmft.strategies.core.contract import TuningStrategy, tensor_nbytes
from mllmft.strategies.core.theta0 import Theta0

MASKS = ("soft", "binary")


def zscore_coefficients(mean: torch.Tensor, std: torch.Tensor, eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """(centre, scale) with z = (|x| − centre) · scale = (|x| − mean|x|) / (std|x| + eps).

    An all-zero tensor gets centre = +inf, so that N = sigmoid(z) is exactly 0 there (the spec's
    N(0) = 0) without a separate pass. (|x| − mean) is formed before scaling, so a constant tensor
    gets z = 0 exactly, whatever eps."""
    return torch.where(mean > 0, mean, float("inf")), 1.0 / (std + eps)


def importance(magnitude: torch.Tensor, centre: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """N = sigmoid((|x| − centre) · scale), in place on ``magnitude`` (an fp32 |x|)."""
    return magnitude.sub_(centre).mul_(scale).sigmoid_()


def normalized_importance(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """N(x) = sigmoid((|x| − mean|x|) / (std|x| + eps)) of a whole tensor; 0 for an all-zero tensor."""
    from mllmft.engines import Engine

    magnitude = x.detach().abs().float().reshape(-1)
    mean, std = tensor_stats.moments(Engine(), [magnitude], [magnitude.numel()])
    return importance(magnitude, *zscore_coefficients(mean[0], std[0], eps)).view_as(x)


def spider_mask(
    theta0: torch.Tensor, accumulated: torch.Tensor, mask: str = "soft", eps: float = 1e-12
) -> torch.Tensor:
    """M for one whole tensor (the reference form; training uses ``SPIDER.masks`` on fragments)."""
    from mllmft.engines import Engine

    return (
        SPIDER(mask, eps)
        .masks(Engine(), [theta0.reshape(-1)], [accumulated.reshape(-1)], [theta0.numel()])[0]
        .view_as(theta0)
    )


class SPIDER(TuningStrategy):
    """Persistent state: θ0 (the parameters' dtype) + the signed gradient sum (fp32) = 8 bytes per
    trainable parameter in fp32 training, 6 in bf16, over N ranks when sharded. The pre-trained
    importance is recomputed each step from two cached scalars per tensor rather than stored, and
    masks exist for one step at a time."""

    writes_weights = True
    captures_weights = True

    def __init__(self, mask: str = "soft", eps: float = 1e-12):
        if mask not in MASKS:
            raise ConfigError(f"strategy.mask={mask!r}; expected one of {MASKS}")
        check_number("strategy.eps", eps, 0, low_open=True)
        self.mask = mask
        self.eps = eps
        self.theta0 = Theta0()
        self.accumulated: dict[str, torch.Tensor] = {}  # Σ g, fp32, beside each fragment
        self._theta0_coefficients: tuple[torch.Tensor, torch.Tensor] | None = None

    def capture(self, weights) -> None:
        self.theta0.capture(weights)

    def start(self, ctx) -> None:
        self.theta0.place(ctx.fragments)
        for f in ctx.fragments:
            held = self.accumulated.get(f.name)
            self.accumulated[f.name] = (
                held.to(f.values().device)
                if held is not None
                else torch.zeros(f.size, dtype=torch.float32, device=f.values().device)
            )
        magnitudes = [self.theta0[f.name].abs().float() for f in ctx.fragments]
        mean, std = tensor_stats.moments(ctx.engine, magnitudes, [f.numel for f in ctx.fragments])
        self._theta0_coefficients = zscore_coefficients(mean, std, self.eps)  # θ0 never changes

    def before_step(self, ctx) -> None:
        for f in ctx.fragments:
            grad = f.grad()
            if grad is not None:
                self.accumulated[f.name].add_(grad.float())

    def after_step(self, ctx) -> None:
        fragments = ctx.fragments
        masks = self.masks(
            ctx.engine,
            [self.theta0[f.name] for f in fragments],
            [self.accumulated[f.name] for f in fragments],
            [f.numel for f in fragments],
            self._theta0_coefficients,
        )
        for f, mask in zip(fragments, masks):
            if ctx.logging:
                ctx.mask_stats.add(f.name, mask)
            values = f.values()
            pull = mask.neg_().add_(1).to(values.dtype)  # 1 − M, in the mask's own memory
            values.lerp_(self.theta0[f.name].to(values.dtype), pull)

    def masks(
        self,
        engine,
        theta0: list[torch.Tensor],
        accumulated: list[torch.Tensor],
        numels: list[int],
        theta0_coefficients: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        """M for each tensor from this rank's parts: R = G / (I + G) where G > I (else 0),
        M = min(R / mean(R | R > 0), 1); I = N(θ0), G = N(Σ g), N's mean and std per whole tensor."""
        if theta0_coefficients is None:
            mean, std = tensor_stats.moments(engine, [t.abs().float() for t in theta0], numels)
            theta0_coefficients = zscore_coefficients(mean, std, self.eps)
        g_magnitudes = [a.abs() for a in accumulated]  # fp32, becomes G, then R, then M
        mean, std = tensor_stats.moments(engine, g_magnitudes, numels)
        g_centre, g_scale = zscore_coefficients(mean, std, self.eps)
        i_centre, i_scale = theta0_coefficients
        scratch = torch.empty(max(numels, default=0), dtype=torch.float32, device=tensor_stats.device_of(theta0))
        ratios, wins = [], []
        for j, (t0, g) in enumerate(zip(theta0, g_magnitudes)):
            pre = importance(
                torch.abs(t0, out=scratch[: t0.numel()])
                if t0.dtype == torch.float32
                else scratch[: t0.numel()].copy_(t0).abs_(),
                i_centre[j],
                i_scale[j],
            )  # I
            ratio = importance(g, g_centre[j], g_scale[j])  # G
            win = ratio > pre
            if self.mask == "soft":
                ratio.div_(pre.add_(ratio)).mul_(win)  # R = G / (I + G) where G > I
            ratios.append(ratio)
            wins.append(win)
        if self.mask == "binary":
            return [w.float() for w in wins]
        counts = tensor_stats.totals(engine, wins)
        sums = tensor_stats.totals(engine, ratios)
        inverse_mean = (counts.clamp(min=1) / sums.clamp(min=self.eps)).float()
        return [r.mul_(inverse_mean[j]).clamp_(max=1.0) for j, r in enumerate(ratios)]

    def state_nbytes(self) -> int:
        coefficients = dict(enumerate(self._theta0_coefficients or ()))  # two scalars per tensor
        return self.theta0.nbytes() + tensor_nbytes(self.accumulated, coefficients)

    def state_dict(self) -> dict:
        return {"accumulated": self.accumulated}

    def load_state_dict(self, state: dict) -> None:
        self.accumulated = dict(state.get("accumulated", {}))
