"""The same runs from Python (notebooks): compose a config from overrides, build the pieces, run.

from mllmft import api
cfg = api.compose(["strategy=full", "trainer.max_steps=20"])
parts = api.build(cfg)           # backbone, strategy, datamodule, module, trainer
parts.trainer.fit(parts.module, datamodule=parts.datamodule)
results = api.run(cfg)           # or everything, as mllmft-train does
"""

from __future__ import annotations

from omegaconf import DictConfig

from mllmft.build import prepare
from mllmft.config import compose
from mllmft.parts import RunParts
from mllmft.run import run

__all__ = ["RunParts", "build", "compose", "run"]


def build(cfg: DictConfig) -> RunParts:
    """Backbone, strategy, datamodule, module, trainer and loggers of a run, ready to use."""
    return prepare(cfg)
