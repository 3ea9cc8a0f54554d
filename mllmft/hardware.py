"""The device for work on the model before Lightning places it (Model-Dowser's probe, the KL probe's base,
the data-driven merges). The engines (how the model is spread over ranks) are in ``mllmft.engines``."""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch
from torch import nn


def compute_device(model: nn.Module) -> torch.device:
    """This rank's GPU when there is one, else the model's own device: for work on the model before
    Lightning moves it (Model-Dowser's probe, the data-driven merges)."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return next(model.parameters()).device


@contextmanager
def on_compute_device(model: nn.Module):
    """The model on ``compute_device`` in eval mode (no dropout: deterministic), put back after."""
    home, was_training = next(model.parameters()).device, model.training
    device = compute_device(model)
    model.to(device).eval()
    try:
        yield device
    finally:
        model.to(home).train(was_training)
