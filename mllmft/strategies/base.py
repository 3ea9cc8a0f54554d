"""The tuning-strategy protocol: how the parameters the scope left trainable are updated."""

from __future__ import annotations

import torch
from lightning import Callback

from mllmft.backbones import Backbone


class TuningStrategy:
    """A small object built from ``conf/strategy/<name>.yaml``.

    The run calls, in order: ``attach`` (after the scope has set ``requires_grad``), ``callbacks``
    (added to the trainer's), and ``extra_loss`` on every training step. ``state_dict`` /
    ``load_state_dict`` carry whatever must survive a checkpoint and resume.
    """

    name: str = "base"
    trains: bool = True  # False: the run only evaluates

    def attach(self, backbone: Backbone) -> None:
        """Prepare the model (wrap, freeze, snapshot what the strategy needs)."""

    def callbacks(self) -> list[Callback]:
        return []

    def extra_loss(self, module, batch: dict, outputs) -> torch.Tensor | None:
        """A regulariser added to the task loss in the same backward, or None."""
        return None

    def state_nbytes(self) -> int:
        """Bytes of persistent state the strategy keeps beside the model (θ0, statistics, masks)."""
        return 0

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
