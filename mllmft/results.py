"""results.json: what a run measured, its settings and its parts' records, written atomically.

``status`` is "partial" after the zero-shot test and "complete" once the final test is in; NaN becomes
null with the reason in ``null_reasons``; ``metric_value`` is what the entry points return to sweepers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from mllmft.atomic_io import write_atomically
from mllmft.config import resolved
from mllmft.errors import ConfigError
from mllmft.metrics import tradeoff_scores
from mllmft.metrics.tradeoff import TRADEOFF_SCORES

if TYPE_CHECKING:
    from mllmft.parts import RunParts

RESULTS_SCHEMA = "mllmft.results/3"
UPSTREAM_SCORES = ("S_u", "H", "F", "O")  # undefined without an upstream set


def make_results(
    cfg: DictConfig,
    parts: RunParts,
    scores: dict,
    details: dict,
    samples: dict,
    steps: int,
    seconds: float,
    run_info: dict | None = None,
    samples_per_s: float | None = None,
    status: str | None = None,
) -> dict:
    """results.json: complete once ``scores`` has the final test, partial (zero-shot only) before, or
    ``status`` (interrupted: a pre-emption stopped the fit after ``steps``). ``run_info`` joins ``run``
    (mllmft-merge's merge); ``samples_per_s`` is the final test's throughput."""
    names = parts.datamodule.test_set_names
    target, upstream = names[0], names[1:]
    tradeoff = {}
    if "zeroshot" in scores:
        z = scores["zeroshot"]
        tradeoff["zeroshot"] = tradeoff_scores(z[target], [z[u] for u in upstream])
    if "final" in scores:
        f = scores["final"]
        tradeoff["final"] = tradeoff_scores(f[target], [f[u] for u in upstream], tradeoff.get("zeroshot"))
    backbone, dm = parts.backbone, parts.datamodule
    results = {
        "schema": RESULTS_SCHEMA,
        "status": status or ("complete" if "final" in scores else "partial"),  # partial: the zero-shot test only
        "run": {
            "model": cfg.model.name,
            "family": backbone.family,
            "backbone_source": backbone.source,
            "strategy": parts.strategy.name,
            "objective": parts.module.objective.summary(),
            **({"replay": replay.summary([s.name for s in dm.replay_sources()])} if (replay := dm.replay) else {}),
            "scope": OmegaConf.to_container(cfg.scope, resolve=True),
            "seed": cfg.seed,
            "output_dir": str(cfg.paths.output_dir),
            **({"strategy_info": info} if (info := parts.strategy.summary()) else {}),
            **(run_info or {}),
        },
        "metrics": {t.name: dict(t.metric) for t in parts.datamodule.test_sets},
        "target": target,
        "upstream": upstream,
        "scores": scores,
        "details": details,
        "samples": samples,
        "tradeoff": tradeoff,
        "trainable_parameters": backbone.parameter_counts(),
        "pretrain": backbone.info.get("pretrain"),
        "global_steps": steps,
        "wall_time_s": round(seconds, 2),
        "eval_samples_per_s": None if samples_per_s is None else round(samples_per_s, 2),
        # every knob of the run, resolved: what mllmft-report groups runs by (all but the seed)
        "config": resolved(cfg),
    }
    return without_nan(results, upstream=bool(upstream))


def without_nan(results: dict, upstream: bool) -> dict:
    """NaN is not JSON: each non-finite number becomes null, and ``null_reasons`` says why."""
    reasons = {}

    def clean(value, path: str):
        if isinstance(value, dict):
            return {k: clean(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, float) and not math.isfinite(value):
            key = path.rsplit(".", 1)[-1]
            reasons[path] = (
                "no upstream set to measure it on"
                if not upstream and key in UPSTREAM_SCORES
                else f"not a finite number ({value})"
            )
            return None
        return value

    cleaned = clean(results, "")
    if reasons:
        cleaned["null_reasons"] = reasons
    return cleaned


def write_results(results: dict, path: Path) -> None:
    """Atomically (a crash mid-write leaves the previous file or none, never half of one)."""
    text = json.dumps(results, indent=2, allow_nan=False)
    write_atomically(path, lambda file: file.write(text.encode()), "the results")


def check_optimized_metric(name: str | None, set_names: list[str]) -> None:
    """``optimized_metric`` names a trade-off score or a test set: at start-up, not once the run is over."""
    if name and name not in (*TRADEOFF_SCORES, *set_names):
        raise ConfigError(
            f"optimized_metric={name!r}; expected a trade-off score {list(TRADEOFF_SCORES)} or a test set {set_names}"
        )


def metric_value(results: dict, name: str) -> float:
    """``optimized_metric`` lookup for sweepers: a trade-off score (H, S_t, ...) or a set's score."""
    # E, F and O are absent without the zero-shot test: nan, as for a score that is not a number
    value = results["tradeoff"]["final"].get(name) if name in TRADEOFF_SCORES else results["scores"]["final"][name]
    return float("nan") if value is None else value  # a sweeper compares numbers
