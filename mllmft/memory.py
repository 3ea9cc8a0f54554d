"""What a forward keeps for the backward: the activation memory that gradient checkpointing trades away.

Measured by autograd's own saved-tensor hooks, so it is exact and the same on any device (a CPU has no
allocator statistics to read): every tensor autograd saves while ``fn`` runs, each storage counted once,
but the model's own parameters (saved for their layers' backward, they are held anyway).
Inside a checkpointed block (non-reentrant) torch's own hooks take the block's tensors and drop them, so
what is counted is what the step really holds between its forward and its backward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def saved_activation_bytes(fn: Callable[[], torch.Tensor], model: nn.Module) -> tuple[torch.Tensor, int]:
    """(``fn()``, the bytes of the distinct storages autograd saved for its backward, ``model``'s
    parameters left out)."""
    weights = {_key(p) for p in model.parameters()}
    storages: dict[tuple, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        key = _key(tensor)
        if key not in weights:
            storages[key] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = fn()
    return out, sum(storages.values())


def _key(tensor: torch.Tensor) -> tuple:
    storage = tensor.untyped_storage()
    return storage.device, storage.data_ptr()
