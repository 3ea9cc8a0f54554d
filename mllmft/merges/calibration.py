"""What the data-driven merges (Model Tailor, Grafting) share: a few training-style batches of the
target set, moved once to the device the merge computes on."""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import nn

from mllmft.errors import ConfigError


def compute_device(model: nn.Module) -> torch.device:
    """This rank's GPU when there is one (the merge runs before Lightning moves the model), else the
    model's own device."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return next(model.parameters()).device


@contextmanager
def on_compute_device(model: nn.Module):
    """The model on ``compute_device`` in eval mode (no dropout: the merge is deterministic), put back after."""
    home, was_training = next(model.parameters()).device, model.training
    device = compute_device(model)
    model.to(device).eval()
    try:
        yield device
    finally:
        model.to(home).train(was_training)


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
