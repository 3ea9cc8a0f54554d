"""Where each trainable tensor lives on this rank, for every training engine: the one place that knows.

A strategy never touches ``param.grad`` or ``param.data``; it works on ``Fragment``s, this rank's
contiguous run of a tensor's flattened elements (the whole tensor on one device and under DDP), and
reduces per-tensor statistics with ``Engine.all_reduce`` (a no-op unless the tensor is sharded):

* ``LocalEngine`` (one device, DDP): the fragment is the whole parameter; gradients are ``param.grad``
  (already averaged over DDP ranks); every rank holds the same state.
* ``FSDP2Engine`` (``fully_shard``, Lightning's ModelParallelStrategy): the parameter is a DTensor
  sharded on dim 0; the fragment is its local shard, gradients the local shard of its DTensor grad.
* ``DeepSpeedEngine`` (ZeRO-2 and ZeRO-3): the fragment is this rank's part of the fp32 master the
  optimizer updates (ZeRO-2: the parameter's range in the rank's flat partition; ZeRO-3: its
  partition), read and written through DeepSpeed's own mappings between backward and the step.
  After weights are written, ``publish`` copies them where the next forward reads them (ZeRO-3: the
  parameter's low-precision partition; ZeRO-2: the replicated parameter, all-gathered), since
  DeepSpeed would otherwise refresh those only at its next step.

Every rank must call ``all_reduce`` and ``publish`` the same number of times (they communicate).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

REBUILD_BUCKET = 2**26  # elements (256 MB of fp32) per all-reduce when DeepSpeed's parameters are rebuilt


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
        return _alive(self._values(), self.name)

    def grad(self) -> torch.Tensor | None:
        """The gradient the optimizer is about to use (reduced over data-parallel ranks); None when
        the parameter got none. Only between backward and the optimizer step."""
        grad = self._grad()
        return None if grad is None else _alive(grad, self.name)

    def part(self, whole: torch.Tensor) -> torch.Tensor:
        """This rank's part of a tensor of the whole parameter's shape (or of its flattening)."""
        return whole.reshape(-1)[self.offset : self.offset + self.size]

    def copy_part(self, whole: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``part(whole)`` in memory of its own beside the fragment: state kept per rank (a view would
        keep the whole tensor alive on every rank)."""
        return self.part(whole).to(device=self.values().device, dtype=dtype or whole.dtype, copy=True)


class LocalEngine:
    """One device or DDP: every rank holds every tensor whole (DDP keeps them identical)."""

    name = "local"
    sharded = False
    gathers_weights = False  # whether every forward gathers parameters from every rank

    def __init__(self, trainer=None):
        self.trainer = trainer

    def fragments(self, model: nn.Module) -> list[Fragment]:
        return [
            Fragment(n, p, p.shape, 0, p.numel(), _flat_data(p), _flat_grad(p))
            for n, p in model.named_parameters()
            if p.requires_grad
        ]

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def publish(self, fragments: list[Fragment]) -> None:
        pass

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


class _DistributedEngine(LocalEngine):
    sharded = True
    group: dist.ProcessGroup | None = None  # None: the world

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


class FSDP2Engine(_DistributedEngine):
    name = "fsdp2"
    gathers_weights = True

    def publish(self, fragments: list[Fragment]) -> None:
        # the root unit keeps its parameters gathered after a forward without backward (the balance
        # measurement's): drop every gathered copy, so that the next forward gathers the new shards
        _reshard(self.trainer.lightning_module.model)

    def __init__(self, trainer):
        super().__init__(trainer)
        self.group = None  # set from the parameters' mesh

    def full_weights(self, model: nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
        from torch.distributed.tensor import DTensor

        return {
            n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().cpu().clone()
            for n, p in model.named_parameters()
            if p.requires_grad or not trainable_only
        }

    def gradients(self, loss: torch.Tensor, fragments: list[Fragment]) -> list[torch.Tensor | None]:
        # the sharded parameters are not in the autograd graph (FSDP2 gathers them outside it):
        # backward, which reduce-scatters into their .grad, then take the local parts and clear it
        loss.backward()
        out = [None if (g := f.grad()) is None else g.clone() for f in fragments]
        for f in fragments:
            f.param.grad = None
        return out

    def fragments(self, model: nn.Module) -> list[Fragment]:
        from torch.distributed.tensor import DTensor
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        # A unit's registered parameters are its gathered copies from its unshard to its reshard, and the
        # root unit stays gathered after a forward without backward (Lightning's sanity validation,
        # a validation during training): taken then, a fragment would point at memory the root's next
        # reshard frees. Resharded, every unit registers its persistent DTensor shards again.
        _reshard(model)
        out = []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if not isinstance(p, DTensor):
                out.append(Fragment(name, p, p.shape, 0, p.numel(), _flat_data(p), _flat_grad(p)))
                continue
            self.group = p.device_mesh.get_group()
            local_shape, global_offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
            row = math.prod(p.shape[1:])
            out.append(
                Fragment(
                    name,
                    p,
                    p.shape,
                    global_offset[0] * row if global_offset else 0,
                    math.prod(local_shape),
                    _local_data(p),
                    _local_grad(p),
                )
            )
        return out


class DeepSpeedEngine(_DistributedEngine):
    """ZeRO-2 and ZeRO-3 (``stage``). Offloaded optimizers keep the master on the CPU: the fragments
    are there too, and ``publish`` moves what it writes to the parameter's device."""

    name = "deepspeed"

    def __init__(self, trainer, stage: int):
        super().__init__(trainer)
        self.stage = stage
        self.gathers_weights = stage == 3
        self.group = None  # DeepSpeed's data-parallel group is the world here (no model parallelism)

    def fragments(self, model: nn.Module) -> list[Fragment]:
        if self.stage == 3:
            return [self._zero3(n, p) for n, p in model.named_parameters() if p.requires_grad]
        return [self._zero2(n, p) for n, p in model.named_parameters() if p.requires_grad]

    @staticmethod
    def _zero2(name: str, p: Any) -> Fragment:  # p: a DeepSpeed-managed parameter (its _hp_mapping ...)
        mapping = getattr(p, "_hp_mapping", None)
        if mapping is None:  # none of this parameter is in this rank's partition
            empty = torch.empty(0, device=p.device)
            return Fragment(name, p, p.shape, 0, 0, lambda: empty, lambda: empty)

        def grad() -> torch.Tensor:
            flat = mapping.get_lp_grad_fragment(p._index_in_param_group).view(-1)
            if flat.numel() == p.numel():  # a bf16 optimizer keeps the whole accumulated gradient
                flat = flat.narrow(0, mapping.lp_fragment_address.start, mapping.lp_fragment_address.numel)
            return flat

        address = mapping.lp_fragment_address
        return Fragment(name, p, p.shape, address.start, address.numel, lambda: mapping.get_hp_fragment(), grad)

    def _zero3(self, name: str, p: Any) -> Fragment:  # p: a ZeRO-3 parameter (ds_tensor, ds_numel ...)
        from deepspeed.utils import safe_get_local_fp32_param, safe_get_local_grad

        partition = p.ds_tensor.numel()
        offset = self.rank() * partition
        size = max(0, min(partition, p.ds_numel - offset))
        return Fragment(
            name,
            p,
            p.ds_shape,
            offset,
            size,
            lambda: safe_get_local_fp32_param(p)[:size],
            lambda: safe_get_local_grad(p)[:size],
        )

    def full_weights(self, model: nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
        if self.stage != 3:
            return super().full_weights(model, trainable_only)
        import deepspeed

        out = {}
        for name, p in model.named_parameters():  # one tensor at a time: never the whole model at once
            if p.requires_grad or not trainable_only:
                with deepspeed.zero.GatheredParameters([p]):
                    out[name] = p.detach().cpu().clone()
        return out

    def gradients(self, loss: torch.Tensor, fragments: list[Fragment]) -> list[torch.Tensor | None]:
        engine = self.trainer.model  # the DeepSpeedEngine: its backward reduces into the partitions
        engine.backward(loss)
        out: list[torch.Tensor | None] = [
            torch.empty(0, device=f.param.device) if not f.size else None if (g := f.grad()) is None else g.clone()
            for f in fragments
        ]
        engine.optimizer.zero_grad()
        return out

    def publish(self, fragments: list[Fragment]) -> None:
        if self.stage == 3:
            from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

            zero3: list[Any] = [f.param for f in fragments]  # DeepSpeed's attributes on the parameters
            for f, p in zip(fragments, zero3):
                if f.size:
                    p.ds_tensor.data[: f.size].copy_(f.values())
            # small parameters stay gathered between forwards (stage3_param_persistence_threshold):
            # their whole copy is what the next forward reads
            self._rebuild([f for f, p in zip(fragments, zero3) if p.ds_status == ZeroParamStatus.AVAILABLE])
        else:  # ZeRO-2: every rank holds every parameter whole
            self._rebuild(fragments)

    def _rebuild(self, fragments: list[Fragment]) -> None:
        """Each parameter whole again from the ranks' fragments (each element is on one rank), in
        buckets of at most REBUILD_BUCKET elements: one all-reduce per bucket, not per tensor."""
        bucket: list[Fragment] = []
        for f in fragments:
            if bucket and sum(b.numel for b in bucket) + f.numel > REBUILD_BUCKET:
                self._rebuild_bucket(bucket)
                bucket = []
            bucket.append(f)
        if bucket:
            self._rebuild_bucket(bucket)

    @torch.no_grad()
    def _rebuild_bucket(self, fragments: list[Fragment]) -> None:
        flat = torch.zeros(sum(f.numel for f in fragments), dtype=torch.float32, device=fragments[0].param.device)
        wholes = flat.split([f.numel for f in fragments])
        for f, whole in zip(fragments, wholes):
            if f.size:
                f.part(whole).copy_(f.values())
        self.all_reduce(flat)
        for f, whole in zip(fragments, wholes):
            f.param.data.copy_(whole.view(f.shape))


def _alive(view: torch.Tensor, name: str) -> torch.Tensor:
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


def engine_for(trainer) -> LocalEngine:
    """The adapter for the trainer's Lightning strategy."""
    from lightning.pytorch.strategies import DeepSpeedStrategy, ModelParallelStrategy

    strategy = trainer.strategy
    if isinstance(strategy, DeepSpeedStrategy):
        assert strategy.config is not None, "DeepSpeedStrategy is set up before the strategy runner starts"
        return DeepSpeedEngine(trainer, int(strategy.config["zero_optimization"]["stage"]))
    if isinstance(strategy, ModelParallelStrategy):
        return FSDP2Engine(trainer)
    return LocalEngine(trainer)


def _reshard(model: nn.Module) -> None:
    """Every FSDP2 unit of ``model`` back to its shards (a no-op for a unit that is sharded already)."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def _flat_data(p: nn.Parameter) -> Callable[[], torch.Tensor]:
    return lambda: p.data.view(-1)


def _flat_grad(p: nn.Parameter) -> Callable[[], torch.Tensor | None]:
    return lambda: None if p.grad is None else p.grad.view(-1)


def _local_data(p) -> Callable[[], torch.Tensor]:
    return lambda: p.data._local_tensor.view(-1)


def _local_grad(p) -> Callable[[], torch.Tensor | None]:
    return lambda: None if p.grad is None else p.grad._local_tensor.view(-1)
