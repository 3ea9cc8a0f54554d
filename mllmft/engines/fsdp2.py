"""FSDP2 (``fully_shard``), everything about it: how the model is sharded, the Lightning strategy that
runs it, and the engine adapter through which tuning strategies reach its shards.

* ``shard_model``: every block of every component's layer list is a unit, the rest of the model the
  root unit (``MLLMFineTuner.configure_model`` calls it under Lightning's ModelParallelStrategy).
* ``FSDP2Strategy``: Lightning's ModelParallelStrategy (data parallel only) that writes a sharded
  checkpoint whole or not at all, with each rank's tuning-strategy state beside it (rank_state.py).
* ``FSDP2Engine``: a parameter is a DTensor sharded on dim 0; its fragment is the local shard, its
  gradient the local shard of the DTensor gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.fsdp import FSDPModule, fully_shard

from mllmft.engines.base import ShardedEngine
from mllmft.engines.fragment import Fragment, whole
from mllmft.engines.rank_state import METADATA, load_rank_state, save_directory_whole, save_rank_state
from mllmft.errors import ConfigError


def shard_model(model: nn.Module, layers: list[str], mesh) -> None:
    """``model`` sharded over ``mesh`` (Lightning's: data_parallel × tensor_parallel) in place: each block
    of each layer list in ``layers`` one unit, the rest the root unit. Once: a sharded model is kept."""
    if isinstance(model, FSDPModule):
        return
    if mesh["tensor_parallel"].size() != 1:
        raise ConfigError(
            "hardware.lightning_strategy: tensor parallelism is not supported; set "
            "tensor_parallel_size: 1 (FSDP2 data parallelism only)"
        )
    for path in layers:
        for block in cast(nn.ModuleList, model.get_submodule(path)):
            fully_shard(block, mesh=mesh["data_parallel"])
    fully_shard(model, mesh=mesh["data_parallel"])


@contextmanager
def root_gathered(model: nn.Module):
    """The root unit's parameters gathered for a whole call (a no-op unless ``model`` is sharded):
    generate() reaches submodules (the vision tower's patch embedding) without the root's forward, so
    FSDP2 would never gather them."""
    if not isinstance(model, FSDPModule):
        yield
        return
    # FSDP2 decides which unit is the root at the first forward; generate() may call the vision blocks
    # first (a zero-shot test before any training step), so settle it now (torch has no public call)
    model._get_fsdp_state()._lazy_init()
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def reshard(model: nn.Module) -> None:
    """Every FSDP2 unit of ``model`` back to its shards (a no-op for a unit that is sharded already)."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 data parallelism (``shard_model``), with per-rank strategy state in its checkpoints."""

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        path = Path(self.broadcast(str(filepath)))
        if not self._save_distributed_checkpoint:  # one file, through the (atomic) CheckpointIO
            return super().save_checkpoint(checkpoint, path, storage_options)

        save_directory_whole(
            self,
            path,
            lambda directory: save_rank_state(self, checkpoint, directory),
            lambda directory: super(FSDP2Strategy, self).save_checkpoint(checkpoint, directory, storage_options),
        )

    def load_checkpoint(self, checkpoint_path, weights_only=None) -> dict:
        path = Path(self.broadcast(str(checkpoint_path)))
        if not (path / METADATA).is_file():  # a single-file checkpoint
            return load_rank_state(self, super().load_checkpoint(path, weights_only), path)
        from torch.distributed.checkpoint import FileSystemReader, load
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
            set_optimizer_state_dict,
        )

        # Lightning's loader asks the checkpoint for every tensor of the model; ours hold the trainable
        # ones only (MLLMFineTuner.on_save_checkpoint: the frozen rest comes from model.checkpoint)
        saved = FileSystemReader(str(path)).read_metadata().state_dict_metadata
        module = self.lightning_module
        assert module is not None, "a checkpoint is loaded into a module that the strategy holds"
        model_state = {k: v for k, v in get_model_state_dict(module).items() if f"state_dict.{k}" in saved}
        load({"state_dict": model_state}, checkpoint_id=path)
        module.load_state_dict(model_state, strict=False)
        for i, optimizer in enumerate(self.optimizers):
            key = f"optimizer_{i}"
            state = {key: get_optimizer_state_dict(module, optimizer)}
            load(state, checkpoint_id=path)
            set_optimizer_state_dict(
                module, optimizer, optim_state_dict=state[key], options=StateDictOptions(cpu_offload=True)
            )
        metadata = torch.load(path / METADATA, map_location="cpu", weights_only=weights_only)
        return load_rank_state(self, metadata, path)


class FSDP2Engine(ShardedEngine):
    name = "fsdp2"
    gathers_weights = True

    def publish(self, fragments: list[Fragment]) -> None:
        # the root unit keeps its parameters gathered after a forward without backward (the balance
        # measurement's): drop every gathered copy, so that the next forward gathers the new shards
        reshard(self.trainer.lightning_module.model)

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
        reshard(model)
        out = []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if not isinstance(p, DTensor):
                out.append(whole(name, p))
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


def _local_data(p) -> Callable[[], torch.Tensor]:
    return lambda: p.data._local_tensor.view(-1)


def _local_grad(p) -> Callable[[], torch.Tensor | None]:
    return lambda: None if p.grad is None else p.grad._local_tensor.view(-1)
