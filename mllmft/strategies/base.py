"""The tuning-strategy protocol: how the parameters the scope left trainable are updated."""

from __future__ import annotations

import torch
from lightning import Callback

from mllmft.backbones import Backbone
from mllmft.errors import ConfigError


class TuningStrategy:
    """A small object built from ``conf/strategy/<name>.yaml``.

    The run calls, in order: ``attach`` (after the scope has set ``requires_grad``), ``callbacks``
    (added to the trainer's), and ``extra_loss`` on every training step. ``state_dict`` /
    ``load_state_dict`` carry whatever must survive a checkpoint and resume.
    """

    name: str = "base"
    trains: bool = True  # False: the run only evaluates
    # True: its callbacks read or write whole gradients / parameters (θ0, masks, weight swaps), which
    # sharded training (FSDP, DeepSpeed) does not give them; refused there at start-up
    needs_whole_parameters: bool = False

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


SHARDED_TRAINING = ("deepspeed", "fsdp", "modelparallel")


def check_hardware(strategy: TuningStrategy, lightning_strategy) -> None:
    """Refuse, before anything is built, a tuning strategy the training strategy would silently break."""
    target = lightning_strategy.get("_target_", "") if hasattr(lightning_strategy, "get") else lightning_strategy
    sharded = any(k in str(target).lower().replace("_", "") for k in SHARDED_TRAINING)
    if sharded and strategy.needs_whole_parameters:
        raise ConfigError(
            f"strategy={strategy.name} reads whole gradients and parameters in its callbacks, which "
            f"hardware.lightning_strategy={target} shards; it is tested on one device and with DDP: use "
            "hardware.lightning_strategy=ddp (or a peft / full / hft strategy)")
