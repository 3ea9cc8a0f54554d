"""What the data-driven merges (Model Tailor, Grafting) share: a few training-style batches of the
target set, moved once to the device the merge computes on (``hardware.on_compute_device``)."""

from __future__ import annotations

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import nn

from mllmft.errors import ConfigError


def target_batches(datamodule, split: str, samples: int, device: torch.device, what: str) -> list[dict]:
    """The first batches of the target's ``split`` (training collation: labels, right padding) holding
    ``samples`` samples (the last batch may bring a few more)."""
    datamodule.setup("fit")
    loader = datamodule.train_dataloader() if split == "train" else datamodule.val_dataloader()
    if not loader:
        raise ConfigError(f"{what} reads the target's {split} split, and the target set has none")
    batches, seen = [], 0
    for batch in loader:
        batches.append(move_data_to_device({"model_inputs": batch["model_inputs"], "labels": batch["labels"]}, device))
        seen += len(batch["ids"])
        if seen >= samples:
            break
    if not batches:
        raise ConfigError(f"{what}: the target's {split} split is empty")
    return batches


def batch_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(**batch["model_inputs"], labels=batch["labels"]).loss
