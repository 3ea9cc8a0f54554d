"""Specialisation vs generalisation: S_t, S_u, H and (with a zero-shot reference) E, F, O."""

from __future__ import annotations

TRADEOFF_SCORES = ("S_t", "S_u", "H", "E", "F", "O")  # E, F, O: against the zero-shot test


def harmonic_mean(a: float, b: float) -> float:
    """H of two scores (0 when both are 0): the trade-off between target and upstream."""
    return 0.0 if a + b <= 0 else 2.0 * a * b / (a + b)


def tradeoff_scores(target: float, upstream: list[float], zeroshot: dict | None = None) -> dict:
    """``zeroshot`` is the same dict computed for the model before fine-tuning."""
    s_u = sum(upstream) / len(upstream) if upstream else float("nan")
    out = {"S_t": target, "S_u": s_u, "H": harmonic_mean(target, s_u) if upstream else float("nan")}
    if zeroshot is not None:
        out["E"] = target - zeroshot["S_t"]
        out["F"] = s_u - zeroshot["S_u"]
        out["O"] = out["E"] + out["F"]
    return out
