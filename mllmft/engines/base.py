"""``Engine``: where each trainable tensor lives on this rank, and how ranks combine what they measure.

This base is the unsharded engine (one device, or DDP: every rank holds every tensor whole and DDP
keeps them identical); ``ShardedEngine`` is the base of the engines that split tensors over ranks
(``FSDP2Engine``, ``ZeroEngine``). Every rank must call ``all_reduce``, ``all_gather``, ``publish``,
``full_weights`` and ``gradients`` the same number of times: they communicate.
"""

from __future__ import annotations

import weakref
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import nn

from mllmft.engines.fragment import Fragment, whole
from mllmft.errors import ConfigError


class Engine:
    """One device or DDP. ``trainer``: the Lightning trainer whose Lightning strategy this engine adapts
    (None for a tuning strategy driven by hand in a test or a bench)."""

    name: ClassVar[str] = "local"
    sharded: ClassVar[bool] = False  # whether a rank holds a part of some tensors only
    gathers_weights: bool = False  # whether every forward gathers parameters from every rank

    def __init__(self, trainer: Any = None):
        # weakly: engine_for caches engines per Lightning strategy, which the trainer holds; a strong
        # reference back would keep every trainer (and its model) of a sweep or a notebook alive
        self._trainer = None if trainer is None else weakref.ref(trainer)

    @property
    def trainer(self) -> Any:
        return None if self._trainer is None else self._trainer()

    @classmethod
    def check_strategy(cls, tuning_strategy) -> None:
        """Refuse, at start-up, a tuning strategy this engine cannot run (a ConfigError saying why)."""

    def fragments(self, model: nn.Module) -> list[Fragment]:
        """This rank's part of every trainable parameter of ``model``."""
        return [whole(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over the ranks that hold parts of the tensors, in place (nothing to do unsharded)."""
        return tensor

    def publish(self, fragments: list[Fragment]) -> None:
        """Make weights written through ``fragments`` what the next forward reads."""

    def world_size(self) -> int:
        return 1

    def rank(self) -> int:
        return 0

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        return [tensor]

    def full_weights(self, model: nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
        """Every parameter whole, on the CPU (exports, tests). Every rank must call it."""
        return {
            n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad or not trainable_only
        }

    def gradients(self, loss: torch.Tensor, fragments: list[Fragment]) -> list[torch.Tensor | None]:
        """This rank's part of the gradient of ``loss`` for each fragment, averaged over the
        data-parallel ranks as a training step's is, outside a training step and leaving no
        ``.grad`` behind (probes before training: EWC's Fisher). Every rank must call it."""
        grads = torch.autograd.grad(loss, [f.param for f in fragments], allow_unused=True)
        world = self.trainer.world_size if self.trainer is not None else 1
        out: list[torch.Tensor | None] = []
        for g in grads:  # under DDP, the reduction DDP would have done (autograd.grad bypasses it)
            if g is not None and world > 1:
                dist.all_reduce(g)
                g.div_(world)
            out.append(None if g is None else g.reshape(-1))
        return out


class ShardedEngine(Engine):
    """An engine that splits tensors over the ranks of ``group`` (None: the world)."""

    sharded = True
    group: dist.ProcessGroup | None = None

    @classmethod
    def check_strategy(cls, tuning_strategy) -> None:
        if tuning_strategy.unsharded_only:
            raise ConfigError(
                f"strategy={tuning_strategy.name} runs on one device or under DDP "
                f"(hardware.lightning_strategy=ddp), not {cls.name}: {tuning_strategy.unsharded_only}"
            )

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor, group=self.group)
        return tensor

    def world_size(self) -> int:
        return dist.get_world_size(self.group)

    def rank(self) -> int:
        return dist.get_rank(self.group)

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        gathered = [torch.zeros_like(tensor) for _ in range(self.world_size())]
        dist.all_gather(gathered, tensor, group=self.group)
        return gathered


class FSDP1Engine(ShardedEngine):
    """Lightning's ``FSDPStrategy`` (FSDP1): it flattens parameters into shards no fragment can address,
    so only tuning strategies that leave training to the optimizer run on it."""

    name = "fsdp1"
    gathers_weights = True

    @classmethod
    def check_strategy(cls, tuning_strategy) -> None:
        super().check_strategy(tuning_strategy)
        if tuning_strategy.acts_on_training:
            raise ConfigError(
                f"strategy={tuning_strategy.name} works on parameter shards through FSDP2 or DeepSpeed; FSDP1 "
                "(hardware.lightning_strategy=fsdp) flattens parameters into shards it cannot address: "
                "use hardware=fsdp2 (or a deepspeed_* choice)"
            )

    def fragments(self, model: nn.Module) -> list[Fragment]:
        raise ConfigError("FSDP1 (hardware.lightning_strategy=fsdp) has no addressable parameter shards")

    def full_weights(self, model: nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
        raise ConfigError("FSDP1 (hardware.lightning_strategy=fsdp): gathering whole weights is not supported")
