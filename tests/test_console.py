"""Around a run: what reaches the loggers, what the console says, what survives an interruption."""

from __future__ import annotations

import json
import logging

import lightning as L
import pytest
import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from mllmft import api
from mllmft.config import CONF_DIR
from mllmft.progress import PlainProgress
from mllmft.report import load_runs
from mllmft.run import run
from tests.helpers.runs import UPSTREAM


def _hparams(path):
    return yaml.safe_load(path.read_text())


def test_config_and_parameter_counts_reach_csv_and_tensorboard_with_the_pictures(compose, tmp_path):
    """The loggers' hparams files hold the resolved config and the parameter counts; the run's mask
    picture reaches TensorBoard as an image."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(compose("logger=csv", "strategy=spider", run_dir="csv_run"))
    hparams = _hparams(tmp_path / "csv_run" / "csv" / "version_0" / "hparams.yaml")
    assert hparams["strategy"]["_target_"].endswith("SPIDER") and hparams["strategy_name"] == "spider"
    assert hparams["module"]["lr"] > 0 and hparams["parameters"]["llm"]["trainable"] > 0

    run(compose("logger=tensorboard", "strategy=spider", run_dir="tb_run"))
    tb = tmp_path / "tb_run" / "tensorboard" / "version_0"
    assert _hparams(tb / "hparams.yaml")["parameters"] == hparams["parameters"]
    assert list((tmp_path / "tb_run").glob("spider_mask_density.png"))
    events = EventAccumulator(str(tb), size_guidance={"images": 0})
    events.Reload()
    assert "figures/spider_mask_density" in events.Tags()["images"]


def test_plain_progress_lines_every_tenth_of_the_steps(compose, caplog):
    """Off a terminal: one line per 10 % of the fit (10 steps: 10 lines) and one per test set."""
    parts = api.build(compose("trainer.max_steps=10", "trainer.val_check_interval=10"))
    trainer, module = parts.trainer, parts.module
    plain = PlainProgress(every_percent=10, force=True)
    trainer.callbacks.append(plain)
    with caplog.at_level(logging.INFO, logger="mllmft.progress"):
        trainer.fit(module, datamodule=parts.datamodule)
        module.test_phase = "final"
        trainer.test(module, datamodule=parts.datamodule, verbose=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "mllmft.progress"]
    steps = [m for m in lines if m.startswith("fine-tuning: step ")]
    assert len(steps) == 10 and steps[-1].startswith("fine-tuning: step 10/10 (100%), loss ")
    tested = [m.split(":")[0] for m in lines if m.startswith("testing")]
    assert tested == [f"testing {s}" for s in ("digits", *UPSTREAM)]


class Interrupt(L.Callback):
    """Ctrl-C as fitting starts."""

    def on_train_start(self, trainer, pl_module):
        raise KeyboardInterrupt


def test_an_interrupted_run_keeps_its_zero_shot_scores(compose, tmp_path):
    """results.json is written (status partial) as soon as the zero-shot scores exist; the report skips it."""
    cfg = compose("zeroshot_test=true")
    with open_dict(cfg):
        cfg.callbacks = {"interrupt": {"_target_": f"{__name__}.Interrupt"}}
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        run(cfg)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "partial" and set(results["scores"]) == {"zeroshot"}
    assert "final" not in results["tradeoff"]  # nothing made up for the phase that did not run
    runs, skipped = load_runs([tmp_path / "run"])
    assert not runs and "partial" in skipped[0]


def test_wandb_is_online_only_with_a_key_where_wandb_login_puts_it(tmp_path, monkeypatch):
    from mllmft.config import _wandb_offline

    for name in ("WANDB_MODE", "WANDB_OFFLINE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert _wandb_offline()  # no key anywhere: offline, never a login prompt
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    netrc.chmod(0o600)
    assert not _wandb_offline()
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")  # a private server: its own entry
    assert _wandb_offline()
    netrc.write_text("machine wandb.example.org\n  login user\n  password abc123\n")
    assert not _wandb_offline()
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert _wandb_offline()
    monkeypatch.delenv("WANDB_MODE")
    netrc.unlink()
    monkeypatch.setenv("WANDB_API_KEY", "abc123")
    assert not _wandb_offline()


@pytest.mark.parametrize("multirun", [False, True])
def test_wandb_names_each_run_by_its_knobs_and_groups_a_sweep(multirun):
    overrides = ["logger=wandb", "strategy=spider", "module.lr=3e-4", "seed=1", "paths.log_dir=/x"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.mode = "MULTIRUN" if multirun else "RUN"
        cfg.hydra.sweep.dir = "/x/train/multiruns/2026-12-02_10-00-00"
        cfg.hydra.runtime.output_dir = "/x/run"
    HydraConfig.instance().set_config(cfg)
    try:
        wandb = cfg.logger.wandb
        assert wandb.name == "tiny_llava-spider module.lr=3e-4 seed=1"
        assert wandb.group == ("train/2026-12-02_10-00-00" if multirun else "train")
    finally:
        HydraConfig.instance().cfg = None
