"""Does the base-to-tuned KL predict forgetting on your data? Over a sweep's or a benchmark's runs,
forgetting F (the upstream change, results.json ``tradeoff.final.F``) against KL(π_base ‖ π_θ) on the
target's probe (``probe_kl``, mllmft/kl_probe.py), and their Spearman rank correlation: "RL's Razor"
found the forward KL on the new task predicting forgetting (R² 0.96 on a toy). A negative ρ is that
finding here (more KL, more negative F: more forgotten)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TypeGuard


def forgetting_points(runs: list[dict], label) -> list[tuple[float, float, str]]:
    """(KL on the target's probe, F, the run's label) of every run that has both as finite numbers."""
    points = []
    for run in runs:
        kl = (run.get("probe_kl") or {}).get(run.get("target")) if isinstance(run.get("probe_kl"), dict) else None
        final = (run.get("tradeoff") or {}).get("final")
        forgetting = final.get("F") if isinstance(final, dict) else None
        if _finite(kl) and _finite(forgetting):
            points.append((float(kl), float(forgetting), label(run)))
    return points


def _finite(value) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties given the mean of the ranks they span."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's ρ: the Pearson correlation of the ranks (nan when either side is constant)."""
    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sx, sy = math.sqrt(sum((a - mx) ** 2 for a in rx)), math.sqrt(sum((b - my) ** 2 for b in ry))
    return cov / (sx * sy) if sx and sy else float("nan")


def forgetting_figure(points: list[tuple[float, float, str]], rho: float, out: Path) -> list[Path]:
    """F against the target's KL, one point per run, coloured by its row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    with matplotlib.rc_context({"text.parse_math": False}):  # labels are the runs' own text
        for name in sorted({p[2] for p in points}):
            mine = [p for p in points if p[2] == name]
            ax.scatter([p[0] for p in mine], [p[1] for p in mine], s=24, label=name)
        ax.set(
            xlabel="KL(base ‖ tuned) on the target's probe (nats per answer token)",
            ylabel="F: upstream change (points)",
            title=f"forgetting against the base-to-tuned KL: Spearman ρ = {rho:.2f} over {len(points)} runs",
        )
        ax.axhline(0, color="grey", lw=0.5)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "forgetting_vs_kl.png", out / "forgetting_vs_kl.svg"]
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1])
    plt.close(fig)
    return paths
