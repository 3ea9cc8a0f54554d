"""What a forward keeps for the backward: the activation memory that gradient checkpointing trades away.

Measured by autograd's own saved-tensor hooks, so it is exact and the same on any device (a CPU has no
allocator statistics to read): every tensor autograd saves while ``fn`` runs, each storage counted once.
Inside a checkpointed block (non-reentrant) torch's own hooks take the block's tensors and drop them, so
what is counted is what the step really holds between its forward and its backward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def saved_activation_bytes(fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(``fn()``, the bytes of the distinct storages autograd saved for its backward)."""
    storages: dict[tuple, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[(storage.device, storage.data_ptr())] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = fn()
    return out, sum(storages.values())
