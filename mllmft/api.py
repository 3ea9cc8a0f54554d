"""The same runs from Python (notebooks): compose a config from overrides, build the pieces, run.

from mllmft import api
cfg = api.compose(["strategy=full", "trainer.max_steps=20"])
parts = api.build(cfg)           # backbone, strategy, datamodule, module, trainer
parts.trainer.fit(parts.module, datamodule=parts.datamodule)
results = api.run(cfg)           # or everything, as mllmft-train does
"""

from __future__ import annotations

import time
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig, open_dict

from mllmft.config import CONF_DIR
from mllmft.run import RunParts, prepare, run

__all__ = ["RunParts", "build", "compose", "run"]


def compose(
    overrides: list[str] | None = None, config_name: str = "train", output_dir: str | Path | None = None
) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with command-line style overrides, outside a Hydra app.

    ``paths.output_dir`` (set by Hydra's run directory on the command line) defaults to
    ``logs/api/<timestamp>`` under the current directory.
    """
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="api"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides or []))
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir or Path("logs/api") / time.strftime("%Y-%m-%d_%H-%M-%S"))
    return cfg


def build(cfg: DictConfig) -> RunParts:
    """Backbone, strategy, datamodule, module, trainer and loggers of a run, ready to use."""
    return prepare(cfg)
