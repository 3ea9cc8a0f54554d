"""Lightning strategies for the sharded engines, as ``conf/hardware/*.yaml`` choose them.

Both write a sharded checkpoint whole or not at all (``save_directory_whole``), and keep each rank's
strategy state (θ0's companions: SPIDER's gradient sums, masks, EWC's Fisher) in its own file inside
the sharded checkpoint directory, ``<checkpoint>/strategy_state/rank<r>.pt``, since Lightning writes
the rest of a checkpoint's non-tensor state from rank 0 only; a resume reads each rank's file back
(the same number of ranks is required and checked).

``DeepSpeedStrategy`` also runs on the CPU (gloo, for tests): Lightning's refuses any accelerator
but CUDA, though DeepSpeed's ZeRO-2/3 run there (DeepSpeed's CPU accelerator). On CUDA it is Lightning's.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
from lightning.pytorch.strategies import DeepSpeedStrategy as LightningDeepSpeedStrategy
from omegaconf import OmegaConf
from torch import nn

from mllmft.atomic_io import replace_directory, temporary_of
from mllmft.errors import ConfigError, StorageError

STATE_DIR = "strategy_state"
METADATA = "meta.pt"  # a distributed checkpoint's non-tensor part (Lightning's name)
RUNNER_KEY = "StrategyRunner["


def _split_off_runner_state(checkpoint: dict) -> dict:
    callbacks = checkpoint.get("callbacks", {})
    return {k: callbacks.pop(k) for k in [k for k in callbacks if str(k).startswith(RUNNER_KEY)]}


def save_directory_whole(
    strategy, path: Path, local: Callable[[Path], None], collective: Callable[[Path], None]
) -> None:
    """A sharded checkpoint, a directory each rank writes its part of, written as ``.<name>.tmp`` beside
    ``path`` and swapped in once every rank has written all of its part: a save that fails on any rank
    (a full disk) keeps the previous checkpoint whole, and every rank stops with one line. ``local``
    writes this rank's own files (no communication); ``collective`` the engine's save, which every rank
    enters together, so that a failure of one rank's own files never leaves the others waiting inside
    the engine's collectives."""
    tmp = temporary_of(path)
    if strategy.is_global_zero:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run that died while saving
    strategy.barrier()
    for save in (local, collective):
        failure: BaseException | None = None
        try:
            save(tmp)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as err:  # torch.distributed.checkpoint's CheckpointException is a BaseException
            failure = err
        if not strategy.reduce_boolean_decision(failure is None, all=True):
            if strategy.is_global_zero:
                shutil.rmtree(tmp, ignore_errors=True)
            raise StorageError(_save_failure(path, failure)) from failure
    strategy.barrier()
    if strategy.is_global_zero:
        replace_directory(tmp, path)
    strategy.barrier()


def _save_failure(path: Path, failure: BaseException | None) -> str:
    if failure is None:
        reason = "another rank could not write its part"
    else:
        reason = (
            getattr(failure, "strerror", None) or (str(failure).strip().splitlines() or [type(failure).__name__])[0]
        )
    kept = f"the previous {path.name} is kept unchanged" if path.exists() else f"no {path.name} was written"
    return f"could not write the checkpoint {path} ({reason}); {kept}"


def _save_rank_state(strategy, checkpoint: dict, directory: Path) -> None:
    state = _split_off_runner_state(checkpoint)
    folder = directory / STATE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"world_size": strategy.world_size, "state": state}, folder / f"rank{strategy.global_rank}.pt")


def _load_rank_state(strategy, checkpoint: dict, directory: Path) -> dict:
    path = directory / STATE_DIR / f"rank{strategy.global_rank}.pt"
    if not path.is_file():
        return checkpoint
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved["world_size"] != strategy.world_size:
        raise ConfigError(
            f"{directory} was saved by {saved['world_size']} ranks; this run has {strategy.world_size}: "
            "resume a sharded checkpoint with the same number of processes"
        )
    checkpoint.setdefault("callbacks", {}).update(saved["state"])
    return checkpoint


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 (``fully_shard``, MLLMFineTuner.configure_model) data parallelism, with per-rank state."""

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        path = Path(self.broadcast(str(filepath)))
        if not self._save_distributed_checkpoint:  # one file, through the (atomic) CheckpointIO
            return super().save_checkpoint(checkpoint, path, storage_options)

        save_directory_whole(
            self,
            path,
            lambda directory: _save_rank_state(self, checkpoint, directory),
            lambda directory: super(FSDP2Strategy, self).save_checkpoint(checkpoint, directory, storage_options),
        )

    def load_checkpoint(self, checkpoint_path, weights_only=None) -> dict:
        path = Path(self.broadcast(str(checkpoint_path)))
        if not (path / METADATA).is_file():  # a single-file checkpoint
            return _load_rank_state(self, super().load_checkpoint(path, weights_only), path)
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
        return _load_rank_state(self, metadata, path)


class DeepSpeedStrategy(LightningDeepSpeedStrategy):
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
            lambda directory: _save_rank_state(self, checkpoint, directory),
            lambda directory: super(DeepSpeedStrategy, self).save_checkpoint(checkpoint, directory, storage_options),
        )

    def load_checkpoint(self, checkpoint_path, weights_only=None) -> dict:
        path = Path(self.broadcast(str(checkpoint_path)))
        return _load_rank_state(self, super().load_checkpoint(path, weights_only), path)


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
