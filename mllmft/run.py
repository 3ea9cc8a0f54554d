"""One run, the protocol top to bottom: build and check -> zero-shot test -> change -> final test -> results.

The change (``change=``: fit for mllmft-train, merge for mllmft-merge, evaluate for mllmft-eval; see
changes.py) is what happens between the two tests; ``api.run`` runs the same.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from mllmft.build import prepare
from mllmft.changes import change_from_config
from mllmft.checks import check_run_settings
from mllmft.config import is_first_job
from mllmft.console import print_config, print_parameters, print_results, quiet_library_notices
from mllmft.errors import Preempted
from mllmft.export import export_model
from mllmft.kl_probe import logged_probe
from mllmft.loggers import log_hyperparameters, log_images, log_summary
from mllmft.module import logged_test_scores
from mllmft.parts import RunParts
from mllmft.results import check_optimized_metric, make_results, write_results
from mllmft.run_lock import run_directory_lock

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    """The run ``cfg`` describes; returns results.json's content (written to the run directory). One run
    at a time in a run directory (mllmft.run_lock)."""
    check_run_settings(cfg)  # before the lock, the first write into the run directory (prepare checks again)
    with run_directory_lock(cfg.paths.output_dir):
        return _run(cfg)


def _run(cfg: DictConfig) -> dict:
    started, out = time.time(), Path(cfg.paths.output_dir)
    quiet_library_notices()
    if cfg.get("print_config", True) and is_first_job():  # a sweep's jobs: each in its .hydra/config.yaml
        rank_zero_only(print_config)(cfg, out)
    change = change_from_config(cfg)  # fit, merge or evaluate: its own settings checked now
    parts = prepare(cfg, change)  # every piece built, every input checked
    change.check(parts)  # what the change reads (a merge's θ_ft), against the built run: nothing evaluated yet
    module, trainer, datamodule = parts.module, parts.trainer, parts.datamodule
    names = datamodule.test_set_names
    check_optimized_metric(cfg.get("optimized_metric"), names)
    rank_zero_only(print_parameters)(parts.backbone.parameter_counts(), parts.strategy.name)
    log_hyperparameters(parts.loggers, cfg, parts.backbone.parameter_counts())
    scores, details = {}, {}

    changes = change.changes_model(parts.strategy)
    if changes and cfg.zeroshot_test:  # the reference row: E, F and O compare the final test with it
        module.test_phase = "zeroshot"
        trainer.test(module, datamodule=datamodule, verbose=False)
        scores["zeroshot"], _, details["zeroshot"] = logged_test_scores(trainer, names)
        if trainer.is_global_zero:  # kept if the run stops before its end (status "partial")
            write_results(make_results(cfg, parts, scores, details, {}, 0, time.time() - started), out / "results.json")

    try:
        run_info = change.apply(parts, cfg.get("ckpt_path"))  # fit, merge, or nothing
    except Preempted as stop:  # a scheduler's signal: the step's checkpoint saved; the entry point says how to resume
        if trainer.is_global_zero:
            results = make_results(
                cfg, parts, scores, details, {}, stop.step, time.time() - started, status="interrupted"
            )
            write_results(results, out / "results.json")
        raise
    # from the logged metrics: under ddp_fork/spawn the fit ran in child processes
    steps = int(trainer.callback_metrics.get("trainer/steps", 0))

    module.test_phase = "final"  # an evaluation may start from a training checkpoint
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
        _export(cfg, parts, results, out)
    log_summary(parts.loggers, results)
    if trainer.is_global_zero:
        log_images(parts.loggers, out, steps)
    return results


def _export(cfg: DictConfig, parts: RunParts, results: dict, out: Path) -> None:
    """Every rank takes part (a sharded model is gathered), rank 0 writes and records it."""
    module = parts.module
    exported = export_model(parts.backbone, cfg.export, out / "export", module.engine, module.run_identity)
    if parts.trainer.is_global_zero:
        results["export"] = str(exported)
        write_results(results, out / "results.json")
