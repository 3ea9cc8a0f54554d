"""One run, top to bottom: backbone -> scope -> strategy -> data -> module -> trainer -> results.

Used by the ``mllmft-train`` entry point and by ``mllmft.api`` (notebooks) alike.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from mllmft.backbones import Backbone, build_tiny, load_pretrained
from mllmft.console import print_config, print_results
from mllmft.export import check_export, export_model
from mllmft.metrics import tradeoff_scores
from mllmft.module import test_scores
from mllmft.pretrain import pretrained_tiny
from mllmft.scope import apply_scope
from mllmft.strategies.base import check_hardware

log = logging.getLogger(__name__)
RESULTS_SCHEMA = "mllmft.results/2"


def build_backbone(model: DictConfig, cache_dir: str, accelerator: str = "auto") -> Backbone:
    """A real checkpoint if ``model.checkpoint`` is set; else the tiny model (pre-trained and cached
    if ``model.pretrain`` is set, random otherwise)."""
    if model.get("checkpoint"):
        return load_pretrained(model.family, model.checkpoint, dtype=model.get("dtype", "float32"),
                               attn_implementation=model.get("attn_implementation"),
                               trust_remote_code=model.get("trust_remote_code", False))
    if model.get("pretrain"):
        path = pretrained_tiny(model.family, model.tiny, model.pretrain, cache_dir, accelerator)
        backbone = load_pretrained(model.family, path)
        backbone.info["pretrain"] = json.loads((path / "pretrain.json").read_text())
        return backbone
    return build_tiny(model.family, model.tiny)


def _instantiate_all(group: DictConfig | None) -> list:
    return [instantiate(c) for c in (group or {}).values() if c is not None and "_target_" in c]


def prepare(cfg: DictConfig) -> dict:
    """Build every piece of a run without running it (the notebook API uses this directly)."""
    L.seed_everything(cfg.seed, workers=True)
    strategy = instantiate(cfg.strategy)
    check_hardware(strategy, cfg.hardware.lightning_strategy)  # before minutes of model loading
    backbone = build_backbone(cfg.model, cfg.paths.cache_dir, cfg.hardware.accelerator)
    apply_scope(backbone, cfg.scope)
    strategy.attach(backbone)
    check_export(cfg.get("export"), strategy)
    # Live objects go in through partials: Hydra would turn a dataclass kwarg into a config node.
    datamodule = instantiate(cfg.data, _partial_=True)(processor=backbone.processor)
    if strategy.trains:  # bad data fails here, before any step
        datamodule.setup("fit")
    datamodule.setup("test")
    module = instantiate(cfg.module, _partial_=True)(backbone=backbone, strategy=strategy, scope=cfg.scope,
                                                     test_sets=datamodule.test_sets,
                                                     test_max_new_tokens=datamodule.test_max_new_tokens)
    loggers = _instantiate_all(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, callbacks=_instantiate_all(cfg.get("callbacks")) + strategy.callbacks(),
                          logger=loggers or False)
    return {"backbone": backbone, "strategy": strategy, "datamodule": datamodule, "module": module,
            "trainer": trainer, "loggers": loggers}


def run(cfg: DictConfig) -> dict:
    """Zero-shot test (optional), fit, test on target + upstream; returns and writes results.json."""
    started = time.time()
    if cfg.get("print_config", True):
        L.pytorch.utilities.rank_zero_only(print_config)(cfg)
    parts = prepare(cfg)
    module, trainer, datamodule = parts["module"], parts["trainer"], parts["datamodule"]
    names = datamodule.test_set_names
    scores, details = {}, {}
    # mllmft-eval sets evaluate_only: a checkpoint of any strategy (a peft one too) is tested, not trained
    trains = parts["strategy"].trains and not cfg.get("evaluate_only", False)
    if trains and cfg.zeroshot_test:
        module.test_phase = "zeroshot"
        trainer.test(module, datamodule=datamodule, verbose=False)
        scores["zeroshot"], _, details["zeroshot"] = test_scores(trainer, names)
    steps = 0
    if trains:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        # from the logged metrics: under ddp_fork/spawn the fit ran in child processes
        steps = int(trainer.callback_metrics.get("trainer/steps", 0))
    # an evaluation-only run may still start from a training checkpoint
    module.test_phase = "final"
    trainer.test(module, datamodule=datamodule, verbose=False,
                 ckpt_path=None if trains else cfg.get("ckpt_path"))
    scores["final"], samples, details["final"] = test_scores(trainer, names)
    throughput = float(trainer.callback_metrics["test/samples_per_s"])
    results = make_results(cfg, parts, scores, details, samples, steps, time.time() - started)
    results["eval_samples_per_s"] = round(throughput, 2)
    if trainer.is_global_zero:
        out = Path(cfg.paths.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))
        log.info("results written to %s", out / "results.json")
        print_results(results)
        if cfg.get("export"):  # after the results are safe on disk: a failed export loses nothing
            results["export"] = str(export_model(parts["backbone"], cfg.export, out / "export"))
            (out / "results.json").write_text(json.dumps(results, indent=2))
    _log_summary(parts["loggers"], results)
    return results


def make_results(cfg: DictConfig, parts: dict, scores: dict, details: dict, samples: dict, steps: int,
                 seconds: float) -> dict:
    names = parts["datamodule"].test_set_names
    target, upstream = names[0], names[1:]
    tradeoff = {}
    if "zeroshot" in scores:
        z = scores["zeroshot"]
        tradeoff["zeroshot"] = tradeoff_scores(z[target], [z[u] for u in upstream])
    f = scores["final"]
    tradeoff["final"] = tradeoff_scores(f[target], [f[u] for u in upstream], tradeoff.get("zeroshot"))
    backbone = parts["backbone"]
    return {
        "schema": RESULTS_SCHEMA,
        "run": {"model": cfg.model.name, "family": backbone.family, "backbone_source": backbone.source,
                "strategy": parts["strategy"].name, "scope": OmegaConf.to_container(cfg.scope, resolve=True),
                "seed": cfg.seed, "output_dir": str(cfg.paths.output_dir)},
        "metrics": parts["datamodule"].test_sets,
        "target": target, "upstream": upstream,
        "scores": scores,
        "details": details,
        "samples": samples,
        "tradeoff": tradeoff,
        "trainable_parameters": backbone.parameter_counts(),
        "pretrain": backbone.info.get("pretrain"),
        "global_steps": steps,
        "wall_time_s": round(seconds, 2),
    }


def metric_value(results: dict, name: str) -> float:
    """``optimized_metric`` lookup for sweepers: a trade-off score (H, S_t, ...) or a set's score."""
    final = results["tradeoff"]["final"]
    return final[name] if name in final else results["scores"]["final"][name]


def _log_summary(loggers: list[Logger], results: dict) -> None:
    flat = {f"results/{k}": v for k, v in results["tradeoff"]["final"].items()}
    for phase, per_set in results["scores"].items():
        flat.update({f"results/{phase}/{k}": v for k, v in per_set.items()})
    for component, counts in results["trainable_parameters"].items():
        flat[f"model/params/{component}/trainable"] = counts["trainable"]
    for logger in loggers:
        logger.log_metrics(flat, step=results["global_steps"])
        logger.save()
