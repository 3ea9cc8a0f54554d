"""Memory a step uses, measured: what a forward keeps for the backward (the activation memory that gradient
checkpointing trades away), and the allocator's high-water mark over a whole step.

Measured by autograd's own saved-tensor hooks, so it is exact and the same on any device (a CPU has no
allocator statistics to read): every tensor autograd saves while ``fn`` runs, each storage counted once,
but the model's own parameters (saved for their layers' backward, they are held anyway).
Inside a checkpointed block (non-reentrant) torch's own hooks take the block's tensors and drop them, so
what is counted is what the step really holds between its forward and its backward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile


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


class PeakAllocated:
    """The most bytes held on ``device`` at once between ``start()`` and ``stop()`` (or within ``with``),
    above what was held at the start: the allocator's own allocation and free events as the profiler
    records them (a CPU keeps no allocator statistics; on CUDA the same events, and
    ``torch.cuda.max_memory_allocated`` agrees). ``bytes`` after the stop."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.kind = torch.device(device).type
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.kind == "cuda" else [])
        self._profile = profile(activities=activities, profile_memory=True)
        self.bytes = 0

    def start(self) -> None:
        self._profile.start()

    def stop(self) -> None:
        self._profile.stop()
        recorded: Any = self._profile.profiler.kineto_results.events()  # type: ignore[union-attr]
        events = [e for e in recorded if e.name() == "[memory]" and e.device_type().name.lower() == self.kind]
        held = 0
        for event in sorted(events, key=lambda e: e.start_ns()):
            held += event.nbytes()
            self.bytes = max(self.bytes, held)

    def __enter__(self) -> PeakAllocated:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def peak_allocated_bytes(fn: Callable[[], object], device: torch.device | str = "cpu") -> int:
    """``PeakAllocated`` over one call of ``fn``."""
    with PeakAllocated(device) as peak:
        fn()
    return peak.bytes
