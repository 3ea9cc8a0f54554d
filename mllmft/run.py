"""One run, top to bottom: backbone -> scope -> strategy -> data -> module -> trainer -> results.

Used by the ``mllmft-train`` entry point and by ``mllmft.api`` (notebooks) alike.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from mllmft.atomic_io import write_atomically
from mllmft.backbones import Backbone, build_tiny, check_family_supports, load_pretrained, model_dtype
from mllmft.checkpoint_match import LIGHTNING_ALIASES, check_checkpoint, plain_scope, read_checkpoint, run_identity
from mllmft.checkpointing import FreshLastCheckpoint, use_atomic_saves
from mllmft.checks import check_run_settings, check_training_length
from mllmft.config import is_first_job, resolved
from mllmft.console import print_config, print_parameters, print_results, quiet_library_notices
from mllmft.data.datamodule import check_settings as check_data_settings
from mllmft.engines import check_engine, configured_engine
from mllmft.errors import ConfigError
from mllmft.export import check_export, export_model
from mllmft.hardware import on_compute_device
from mllmft.kl_probe import logged_probe
from mllmft.loggers import log_hyperparameters, log_images, log_summary
from mllmft.metrics import tradeoff_scores
from mllmft.metrics.tradeoff import TRADEOFF_SCORES
from mllmft.module import check_hyperparameters, logged_test_scores
from mllmft.objectives import SFT
from mllmft.pretrain import pretrained_tiny
from mllmft.run_lock import run_directory_lock
from mllmft.scope import apply_scope
from mllmft.strategies.base import TuningStrategy
from mllmft.strategies.runner import StrategyRunner

if TYPE_CHECKING:
    from lightning.pytorch.loggers import Logger

    from mllmft.data import MLLMDataModule
    from mllmft.module import MLLMFineTuner

log = logging.getLogger(__name__)
RESULTS_SCHEMA = "mllmft.results/3"
UPSTREAM_SCORES = ("S_u", "H", "F", "O")  # undefined without an upstream set


@dataclass
class RunParts:
    """Every piece of one run, built and checked by ``prepare`` (``api.build`` returns it)."""

    backbone: Backbone
    strategy: TuningStrategy
    datamodule: MLLMDataModule
    module: MLLMFineTuner
    trainer: L.Trainer
    loggers: list[Logger]
    merge: Any = None  # mllmft-merge's method (a mllmft.merges.MergeMethod), once its update built it


def pretrain_stage(cfg: DictConfig) -> Path | None:
    """The stage before a run, for a tiny model with ``model.pretrain`` only: teach the random model its
    upstream set once (then cached per config), so that fine-tuning has something to forget. A real
    checkpoint comes pre-trained: None."""
    model = cfg.model
    if model.get("checkpoint") or not model.get("pretrain"):
        return None
    return pretrained_tiny(model.family, model.tiny, model.pretrain, cfg.paths.cache_dir, cfg.hardware.accelerator)


def build_backbone(model: DictConfig, pretrained: Path | None = None) -> Backbone:
    """The checkpoint ``model.checkpoint`` names; else the tiny model, from the checkpoint
    ``pretrain_stage`` made of it, or random; each in ``model.dtype``."""
    dtype = model.get("dtype", "float32")
    if model.get("checkpoint"):
        return load_pretrained(
            model.family,
            model.checkpoint,
            dtype=dtype,
            attn_implementation=model.get("attn_implementation"),
            trust_remote_code=model.get("trust_remote_code", False),
        )
    if pretrained is not None:
        backbone = load_pretrained(model.family, pretrained, dtype=dtype)
        backbone.info["pretrain"] = json.loads((pretrained / "pretrain.json").read_text())
        return backbone
    return build_tiny(model.family, model.tiny, dtype)


def _instantiate_all(group: DictConfig | None) -> list:
    return [instantiate(c) for c in (group or {}).values() if c is not None and "_target_" in c]


def check_settings(cfg: DictConfig, strategy) -> dict | None:
    """The checks that need no model, in the first seconds: the knobs in range, the strategy fits the
    hardware and the model family, ``ckpt_path`` is a readable checkpoint (returned, to be matched once
    the model is built)."""
    check_hyperparameters(**{k: v for k, v in cfg.module.items() if k in _parameters(check_hyperparameters)})
    check_data_settings(**{k: v for k, v in cfg.data.items() if k in _parameters(check_data_settings)})
    if strategy.trains and not cfg.get("evaluate_only", False):
        strategy.check_training(cfg)
        check_training_length(cfg.trainer)
    check_engine(strategy, cfg.hardware.lightning_strategy)
    check_family_supports(cfg.model.family, strategy.name)
    model_dtype(cfg.model.get("dtype", "float32"))  # a bad name now, not after minutes of pre-training
    path = cfg.get("ckpt_path")
    return read_checkpoint(path) if path and str(path) not in LIGHTNING_ALIASES else None


def _parameters(fn) -> set[str]:
    return set(inspect.signature(fn).parameters)


def prepare(cfg: DictConfig) -> RunParts:
    """Build every piece of a run without running it (the notebook API uses this directly).

    Everything a user can get wrong is checked here, before any evaluation: settings first (before
    minutes of model loading), then what needs the model (the scope trains something, the
    checkpoint belongs to this model), then every record of the data."""
    check_run_settings(cfg)  # the seed, the trainer's loop, the run directory: before anything uses them
    L.seed_everything(cfg.seed, workers=True)
    strategy = instantiate(cfg.strategy)
    checkpoint = check_settings(cfg, strategy)
    backbone = build_backbone(cfg.model, pretrain_stage(cfg))
    apply_scope(backbone, cfg.scope)
    identity = run_identity(backbone, cfg.scope, strategy.name)  # before the strategy wraps or changes it
    strategy.attach(backbone)
    check_export(cfg.get("export"), strategy)
    trains = strategy.trains and not cfg.get("evaluate_only", False)
    objective = instantiate(cfg.objective) if trains and cfg.get("objective") else SFT()
    objective.attach(backbone, configured_engine(cfg.hardware.lightning_strategy))
    if trains and not any(p.requires_grad for p in backbone.model.parameters()):
        raise ConfigError(
            f"nothing to train: the scope {plain_scope(cfg.scope)} with strategy={strategy.name} leaves "
            "no parameter trainable (use strategy=zeroshot to evaluate only)"
        )
    # Live objects go in through partials: Hydra would turn a dataclass kwarg into a config node.
    datamodule = instantiate(cfg.data, _partial_=True)(
        processor=backbone.processor, collator_class=backbone.collator_class
    )
    if datamodule.replay is not None and objective.rewards_with_target_metric:
        raise ConfigError(
            f"objective={objective.name} scores its sampled answers with the target set's metric, which does not "
            "score the replayed samples of other sets: use data.replay with another objective"
        )
    if trains:  # bad data fails here, before any step
        datamodule.setup("fit")
    datamodule.setup("test")
    probe = instantiate(cfg.probe) if trains and cfg.get("probe") else None  # the KL that predicts forgetting
    if probe is not None:
        with on_compute_device(backbone.model) as device:  # the base model, as loaded
            probe.prepare(backbone.model, datamodule, device)
    module = instantiate(cfg.module, _partial_=True)(
        backbone=backbone,
        strategy=strategy,
        scope=cfg.scope,
        test_sets=datamodule.test_sets,
        run_identity=identity,
        objective=objective,
    )
    if checkpoint is not None:
        check_checkpoint(checkpoint, identity, cfg.ckpt_path, resuming=trains, model_state=module.state_dict())
        del checkpoint  # Lightning reads it again where it restores it
    loggers = _instantiate_all(cfg.get("logger"))
    runner = [StrategyRunner(strategy, backbone.components)] if strategy.acts_on_training else []
    trainer = instantiate(
        cfg.trainer,
        callbacks=[*_instantiate_all(cfg.get("callbacks")), *runner, *strategy.callbacks(), FreshLastCheckpoint()]
        + ([probe] if probe is not None else []),
        logger=loggers or False,
    )
    use_atomic_saves(trainer)
    return RunParts(
        backbone=backbone, strategy=strategy, datamodule=datamodule, module=module, trainer=trainer, loggers=loggers
    )


def run(cfg: DictConfig, update: Callable[[RunParts], Callable[[], dict]] | None = None) -> dict:
    """Zero-shot test (optional), fit, test on target + upstream; returns and writes results.json.

    ``update`` replaces the fit with another change of the model (mllmft-merge's merge): ``update(parts)``
    checks its input at start-up, before any evaluation, and returns the change, called where the
    fit would be; what that returns goes into ``results["run"]``. One run at a time in a run
    directory (mllmft.run_lock)."""
    check_run_settings(cfg)  # before the lock, the first write into the run directory (prepare checks again)
    with run_directory_lock(cfg.paths.output_dir):
        return _run(cfg, update)


def _run(cfg: DictConfig, update: Callable[[RunParts], Callable[[], dict]] | None) -> dict:
    started = time.time()
    quiet_library_notices()
    if cfg.get("print_config", True) and is_first_job():  # a sweep's jobs: each in its .hydra/config.yaml
        rank_zero_only(print_config)(cfg, cfg.paths.output_dir)
    parts = prepare(cfg)
    change = update(parts) if update is not None else None
    module, trainer, datamodule = parts.module, parts.trainer, parts.datamodule
    rank_zero_only(print_parameters)(parts.backbone.parameter_counts(), parts.strategy.name)
    log_hyperparameters(parts.loggers, cfg, parts)
    names = datamodule.test_set_names
    check_optimized_metric(cfg.get("optimized_metric"), names)
    out = Path(cfg.paths.output_dir)
    scores, details = {}, {}
    # mllmft-eval sets evaluate_only: a checkpoint of any strategy (a peft one too) is tested, not trained
    trains = parts.strategy.trains and not cfg.get("evaluate_only", False)
    changes = trains or update is not None
    if changes and cfg.zeroshot_test:
        module.test_phase = "zeroshot"
        trainer.test(module, datamodule=datamodule, verbose=False)
        scores["zeroshot"], _, details["zeroshot"] = logged_test_scores(trainer, names)
        if trainer.is_global_zero:  # kept if the run stops before its end (status "partial")
            write_results(make_results(cfg, parts, scores, details, {}, 0, time.time() - started), out / "results.json")
    steps, run_info = 0, {}
    if change is not None:
        run_info = change()
    elif trains:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        # from the logged metrics: under ddp_fork/spawn the fit ran in child processes
        steps = int(trainer.callback_metrics.get("trainer/steps", 0))
    # an evaluation-only run may still start from a training checkpoint
    module.test_phase = "final"
    trainer.test(module, datamodule=datamodule, verbose=False, ckpt_path=None if changes else cfg.get("ckpt_path"))
    scores["final"], samples, details["final"] = logged_test_scores(trainer, names)
    throughput = float(trainer.callback_metrics["test/samples_per_s"])
    results = make_results(cfg, parts, scores, details, samples, steps, time.time() - started, run_info, throughput)
    if probe_kl := logged_probe(trainer, names):  # KL(π_base ‖ π_θ) per set on the probe (kl_probe.py)
        results["probe_kl"] = probe_kl
    if trainer.is_global_zero:
        write_results(results, out / "results.json")
        log.info("results written to %s", out / "results.json")
        print_results(results)
    if cfg.get("export"):  # after the results are safe on disk: a failed export loses nothing
        # every rank takes part (a sharded model is gathered), rank 0 writes
        exported = export_model(parts.backbone, cfg.export, out / "export", module.engine, module.run_identity)
        if trainer.is_global_zero:
            results["export"] = str(exported)
            write_results(results, out / "results.json")
    log_summary(parts.loggers, results)
    if trainer.is_global_zero:
        log_images(parts.loggers, out, steps)
    return results


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
) -> dict:
    """results.json: complete once ``scores`` has the final test, partial (zero-shot only) before.
    ``run_info`` joins ``run`` (mllmft-merge's merge); ``samples_per_s`` is the final test's throughput."""
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
        "status": "complete" if "final" in scores else "partial",  # partial: the zero-shot test only
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
