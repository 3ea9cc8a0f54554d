"""DeepSpeed ZeRO-2 and ZeRO-3, everything about them: the Lightning strategy that runs them and the
engine adapter through which tuning strategies reach their partitions.

* ``ZeroStrategy``: Lightning's DeepSpeedStrategy, on CUDA or (for tests) on CPU processes (gloo:
  Lightning's refuses any accelerator but CUDA, though ZeRO-2/3 run on DeepSpeed's CPU accelerator),
  writing a checkpoint whole or not at all with each rank's tuning-strategy state beside it.
* ``ZeroEngine``: a fragment is this rank's part of the fp32 master the optimizer updates (ZeRO-2:
  the parameter's range in the rank's flat partition; ZeRO-3: its partition), read and written
  through DeepSpeed's own mappings between backward and the step. After weights are written,
  ``publish`` copies them where the next forward reads them (ZeRO-3: the parameter's low-precision
  partition; ZeRO-2: the replicated parameter, all-gathered), since DeepSpeed would otherwise
  refresh those only at its next step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy
from omegaconf import OmegaConf
from torch import nn

from mllmft.engines.base import ShardedEngine
from mllmft.engines.fragment import Fragment
from mllmft.engines.rank_state import load_rank_state, save_directory_whole, save_rank_state

REBUILD_BUCKET = 2**26  # elements (256 MB of fp32) per all-reduce when DeepSpeed's parameters are rebuilt


class ZeroStrategy(DeepSpeedStrategy):
    """Lightning's DeepSpeed strategy, on CUDA or (for tests) on CPU processes, with per-rank state."""

    def __init__(self, *args, config=None, **kwargs):
        if OmegaConf.is_config(config):  # Lightning wants a plain dict (or a path)
            config = OmegaConf.to_container(config, resolve=True)
        super().__init__(*args, config=config, **kwargs)

    def setup_environment(self) -> None:
        if self.root_device.type == "cuda":
            super().setup_environment()
        else:  # skip the CUDA-only guard
            DDPStrategy.setup_environment(self)

    @property
    def root_device(self) -> torch.device:
        device = super().root_device
        # DeepSpeed asks for an index even on the CPU
        return torch.device("cpu", 0) if device.type == "cpu" else device

    def setup_distributed(self) -> None:
        if self.root_device.type == "cuda":
            return super().setup_distributed()
        from lightning.fabric.utilities.seed import reset_seed

        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    def _initialize_deepspeed_inference(self, model) -> None:
        super()._initialize_deepspeed_inference(model)
        # Lightning removed every module hook first, transformers' output-capturing hooks too, which
        # their modules still mark as installed: let transformers install them again on first use
        for module in model.modules():
            if getattr(module, "_output_capturing_hooks_installed", False):
                module._output_capturing_hooks_installed = False

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        path = Path(self.broadcast(str(filepath)))

        save_directory_whole(
            self,
            path,
            lambda directory: save_rank_state(self, checkpoint, directory),
            lambda directory: super(ZeroStrategy, self).save_checkpoint(checkpoint, directory, storage_options),
        )

    def load_checkpoint(self, checkpoint_path, weights_only=None) -> dict:
        path = Path(self.broadcast(str(checkpoint_path)))
        return load_rank_state(self, super().load_checkpoint(path, weights_only), path)


class ZeroEngine(ShardedEngine):
    """ZeRO-2 and ZeRO-3 (``stage``). Offloaded optimizers keep the master on the CPU: the fragments
    are there too, and ``publish`` moves what it writes to the parameter's device."""

    name = "deepspeed"

    def __init__(self, trainer, stage: int | None = None):
        super().__init__(trainer)
        if stage is None:  # the stage of the trainer's DeepSpeed config
            config = trainer.strategy.config
            assert config is not None, "DeepSpeed's config is set when its Lightning strategy is built"
            stage = int(config["zero_optimization"]["stage"])
        self.stage = stage
        self.gathers_weights = stage == 3
        # DeepSpeed's data-parallel group is the world here (no model parallelism): ``group`` stays None

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
        engine = self.trainer.model  # DeepSpeed's own engine: its backward reduces into the partitions
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
