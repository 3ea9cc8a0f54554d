"""Paired comparisons of benchmark rows over seeds: which differences the seeds can tell apart.

Runs with the same seed share the initialisation, the data order and the test set, so most of the
spread between seeds is common to every row; comparing two rows' means with σ₁ + σ₂ throws that
pairing away. Here each pair of rows is compared on its per-seed differences d_s = a_s − b_s (seeds
both rows ran) with the paired t-test: t = mean(d) / (sd(d) / √n), n − 1 degrees of freedom, and the
interval mean(d) ± t_{1−α/2} · sd(d) / √n. The t distribution's CDF has a closed form for integer
degrees of freedom (Abramowitz & Stegun 26.7.3-4), so no statistics library is needed.

Why a t-test and not a permutation or bootstrap interval: with the 3 to 5 seeds a benchmark affords,
the exact sign-flip test's smallest two-sided p-value is 2 / 2ⁿ (0.25 with 3 seeds, 0.0625 with 5),
so it could never separate two rows at 5 %, and a bootstrap interval of 3 to 5 differences covers far
less than its nominal level. The t-test assumes the per-seed differences are roughly normal.

Many comparisons at once (every row against the reference, or every pair) are corrected with Holm's
step-down method, so the chance of any false "better" or "worse" in one table stays at most α; the
intervals shown against the reference are simultaneous (Bonferroni, α / m each). Holm's verdicts are
a little more powerful than Bonferroni's, so a pair can be separated while its interval just reaches 0.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

ALPHA = 0.05


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| ≥ |t|) for Student's t with ``df`` (a positive integer) degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom {df}: expected at least 1")
    if math.isinf(t):
        return 0.0
    theta = math.atan(abs(t) / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2:  # odd: (2/π)(θ + sinθ cosθ (1 + 2/3 cos²θ + ... + (2·4···(df−3))/(1·3···(df−2)) cos^(df−3)θ))
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        inside = 2 / math.pi * (theta + s * math.cos(theta) * total)
    else:  # even: sinθ (1 + 1/2 cos²θ + ... + (1·3···(df−3))/(2·4···(df−2)) cos^(df−2)θ)
        term, total = 1.0, 1.0
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        inside = s * total
    return min(1.0, max(0.0, 1.0 - inside))


def t_critical(alpha: float, df: int) -> float:
    """The t with P(|T| ≥ t) = ``alpha`` (bisection on the closed-form CDF)."""
    low, high = 0.0, 1.0
    while t_two_sided_p(high, df) > alpha:
        high *= 2
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if t_two_sided_p(mid, df) > alpha else (low, mid)
    return (low + high) / 2


@dataclass(frozen=True)
class Comparison:
    """a − b over the seeds both ran: the mean difference, its (1 − α) interval and the test's p."""

    seeds: int
    mean: float
    low: float
    high: float
    p: float


def compare(a: Mapping[object, float], b: Mapping[object, float], alpha: float = ALPHA) -> Comparison | None:
    """The paired comparison of two rows' per-seed values; None with fewer than 2 seeds in common."""
    seeds = sorted(set(a) & set(b), key=str)
    if len(seeds) < 2:
        return None
    d = [a[s] - b[s] for s in seeds]
    n, mean, sd = len(d), statistics.fmean(d), statistics.stdev(d)
    if sd == 0:  # every seed the same difference: certain if it is not zero (identical runs: p = 1)
        return Comparison(n, mean, mean, mean, 1.0 if mean == 0 else 0.0)
    half = t_critical(alpha, n - 1) * sd / math.sqrt(n)
    return Comparison(n, mean, mean - half, mean + half, t_two_sided_p(mean / (sd / math.sqrt(n)), n - 1))


def holm(p_values: Sequence[float], alpha: float = ALPHA) -> list[bool]:
    """Which hypotheses Holm's step-down method rejects at family-wise error ``alpha``."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    rejected = [False] * len(p_values)
    for rank, i in enumerate(order):
        if p_values[i] > alpha / (len(p_values) - rank):
            break
        rejected[i] = True
    return rejected


def against_reference(
    rows: list[dict], reference: str, col: str = "H", alpha: float = ALPHA
) -> dict[str, tuple[str, Comparison | None]]:
    """{row's name: (verdict, row − reference)} for every row with per-seed values of ``col``: "better",
    "worse" or "cannot tell" (Holm over the rows compared), "reference" for the reference row itself. The
    intervals are simultaneous over the m rows compared (each at α / m, Bonferroni): all of them cover
    their true differences with probability at least 1 − α."""
    seeds = {r["name"]: r[f"{col}_by_seed"] for r in rows if f"{col}_by_seed" in r}
    if reference not in seeds:  # a strategy's name, where a knob that varies elsewhere is in its row's name
        named = [r["name"] for r in rows if r.get("strategy") == reference and r["name"] in seeds]
        if len(named) != 1:
            return {}
        reference = named[0]
    tested = {name: compare(values, seeds[reference], alpha) for name, values in seeds.items() if name != reference}
    compared = {name: c for name, c in tested.items() if c is not None}
    rejected = dict(zip(compared, holm([c.p for c in compared.values()], alpha)))
    simultaneous = alpha / max(1, len(compared))
    tested = {name: compare(seeds[name], seeds[reference], simultaneous) for name in tested}
    out: dict[str, tuple[str, Comparison | None]] = {reference: ("reference", None)}
    for name, c in tested.items():
        verdict = "cannot tell" if c is None or not rejected[name] else "better" if c.mean > 0 else "worse"
        out[name] = (verdict, c)
    return out


def pairwise_wins(rows: list[dict], col: str = "H", alpha: float = ALPHA) -> dict[str, tuple[int, int]]:
    """{row's name: (rows it is above, rows it is below)} by the paired test over every pair of rows,
    Holm-corrected over all the pairs."""
    seeds = {r["name"]: r[f"{col}_by_seed"] for r in rows if f"{col}_by_seed" in r}
    names = list(seeds)
    pairs = [
        (a, b, c) for i, a in enumerate(names) for b in names[i + 1 :] if (c := compare(seeds[a], seeds[b], alpha))
    ]
    rejected = holm([c.p for _, _, c in pairs], alpha)
    wins = {n: [0, 0] for n in names}
    for (a, b, c), separated in zip(pairs, rejected):
        if separated:
            above, below = (a, b) if c.mean > 0 else (b, a)
            wins[above][0] += 1
            wins[below][1] += 1
    return {n: (w[0], w[1]) for n, w in wins.items()}
