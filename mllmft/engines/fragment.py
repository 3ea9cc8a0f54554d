"""A ``Fragment``: this rank's part of one trainable tensor, the unit every tuning strategy works on.

A strategy never touches ``param.grad`` or ``param.data``: it reads and writes a fragment's ``values()``
and ``grad()``, 1-D views of this rank's contiguous run of the tensor's flattened elements (the whole
tensor on one device and under DDP), which the engine (``mllmft.engines``) points wherever its
optimizer keeps them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Fragment:
    """This rank's part of one trainable parameter: elements [offset, offset + size) of the flattened
    whole tensor of ``shape``. ``values()`` and ``grad()`` return 1-D views that can be written."""

    name: str
    param: nn.Parameter
    shape: torch.Size
    offset: int
    size: int
    _values: Callable[[], torch.Tensor]
    _grad: Callable[[], torch.Tensor | None]

    @property
    def numel(self) -> int:
        """Elements of the whole tensor (statistics are over these, on every rank)."""
        return math.prod(self.shape)

    def values(self) -> torch.Tensor:
        """The weights the optimizer continues from (its master copy where it keeps one)."""
        return alive(self._values(), self.name)

    def grad(self) -> torch.Tensor | None:
        """The gradient the optimizer is about to use (reduced over data-parallel ranks); None when
        the parameter got none. Only between backward and the optimizer step."""
        grad = self._grad()
        return None if grad is None else alive(grad, self.name)

    def part(self, whole: torch.Tensor) -> torch.Tensor:
        """This rank's part of a tensor of the whole parameter's shape (or of its flattening)."""
        return whole.reshape(-1)[self.offset : self.offset + self.size]

    def copy_part(self, whole: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``part(whole)`` in memory of its own beside the fragment: state kept per rank (a view would
        keep the whole tensor alive on every rank)."""
        return self.part(whole).to(device=self.values().device, dtype=dtype or whole.dtype, copy=True)


def alive(view: torch.Tensor, name: str) -> torch.Tensor:
    """``view`` itself, if the memory it points at is still allocated. An engine that frees a gathered
    copy (FSDP2's reshard shrinks its storage to 0 bytes) would otherwise turn a write through a
    fragment taken from that copy into a write to freed memory: a crash at best. Costs no data access."""
    needed = (view.storage_offset() + view.numel()) * view.element_size()
    if view.numel() and view.untyped_storage().nbytes() < needed:
        raise RuntimeError(
            f"{name}: this rank's view of the tensor points at memory the engine has freed (a gathered copy "
            "that was resharded); fragments must be taken from the engine's persistent shards"
        )
    return view


def flat_data(p: nn.Parameter) -> Callable[[], torch.Tensor]:
    return lambda: p.data.view(-1)


def flat_grad(p: nn.Parameter) -> Callable[[], torch.Tensor | None]:
    return lambda: None if p.grad is None else p.grad.view(-1)


def whole(name: str, p: nn.Parameter) -> Fragment:
    """The fragment of a tensor this rank holds whole."""
    return Fragment(name, p, p.shape, 0, p.numel(), flat_data(p), flat_grad(p))
