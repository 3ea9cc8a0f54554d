"""``RunParts``: every piece of one run, built and checked by ``build.prepare`` (``api.build`` returns it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import lightning as L

from mllmft.backbones import Backbone
from mllmft.strategies import TuningStrategy

if TYPE_CHECKING:
    from lightning.pytorch.loggers import Logger

    from mllmft.data import MLLMDataModule
    from mllmft.module import MLLMFineTuner


@dataclass
class RunParts:
    """Every piece of one run, built and checked by ``prepare`` (``api.build`` returns it)."""

    backbone: Backbone
    strategy: TuningStrategy
    datamodule: MLLMDataModule
    module: MLLMFineTuner
    trainer: L.Trainer
    loggers: list[Logger]
    trains: bool  # whether the run fits the model (change=fit with a strategy that trains)
