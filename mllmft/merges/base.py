"""Post-hoc merging: a method maps the pre-trained θ0 and a fine-tuned θ_ft to new weights, tensor by
tensor, written into the live (θ0) model. No training loop; the evaluation is mllmft-train's.

θ_ft comes from where ``mllmft-train`` left it: a run directory (its ``export/`` if it has one, else
``checkpoints/last.ckpt``), an HF directory (an export, or any checkpoint of the same model) or a
training checkpoint (trainable tensors only: every other tensor of θ_ft is θ0's). A training
checkpoint is read memory-mapped; an HF directory is loaded once beside the live model, so memory
never holds more than one extra copy of the model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from mllmft.errors import CheckpointNotFoundError, ConfigError

if TYPE_CHECKING:
    from mllmft.run import RunParts

log = logging.getLogger(__name__)


class MergeMethod:
    """``merge(name, theta0, theta_ft) -> merged`` for one tensor (fp32 in, any dtype out); methods
    that need data first get ``prepare(parts, finetuned)`` (the run's parts: backbone, datamodule...),
    which may write tensors into the model itself (Model Tailor merges block by block, each on the
    inputs of the blocks merged before it) and name them in ``written``."""

    name = "base"
    written: frozenset[str] | set[str] = frozenset()

    def prepare(self, parts: RunParts, finetuned: FinetunedWeights) -> None:
        pass

    def merge(self, name: str, theta0: torch.Tensor, theta_ft: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def knobs(self) -> dict:
        """What results.json records under ``run.merge`` besides the method's name."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and isinstance(v, (int, float, str))}


class FinetunedWeights:
    """θ_ft, one tensor at a time: ``get(name)`` is None where the run left θ0 unchanged."""

    def __init__(self, tensors: dict[str, torch.Tensor], source: str, strategy: str | None = None):
        self.tensors = tensors
        self.source = source
        self.strategy = strategy  # the strategy that fine-tuned them, where recorded

    def get(self, name: str) -> torch.Tensor | None:
        return self.tensors.get(name)

    @classmethod
    def open(cls, path: str | Path, backbone, run_identity: dict | None = None) -> FinetunedWeights:
        path = Path(path)
        run_strategy = None
        if path.is_dir() and not (path / "config.json").is_file():  # a run directory of mllmft-train
            run_strategy = _strategy_of_run(path)
            if (path / "export" / "config.json").is_file():
                path = path / "export"
            elif (path / "checkpoints" / "last.ckpt").is_file():
                path = path / "checkpoints" / "last.ckpt"
            else:
                raise CheckpointNotFoundError(
                    f"finetuned={path}: neither an HF directory nor a run directory with "
                    "export/ or checkpoints/last.ckpt"
                )
        if path.is_dir():
            weights = cls._from_hf(path, backbone)
        elif path.is_file():
            weights = cls._from_checkpoint(path, run_identity)
        else:
            raise CheckpointNotFoundError(f"finetuned={path}: no such file or directory")
        weights.check_against(backbone.model)
        weights.strategy = run_strategy or weights.strategy
        return weights

    @classmethod
    def _from_hf(cls, path: Path, backbone) -> FinetunedWeights:
        from mllmft.backbones import load_pretrained

        dtype = str(next(backbone.model.parameters()).dtype).removeprefix("torch.")
        finetuned = load_pretrained(backbone.family, path, dtype=dtype)
        return cls({n: p.detach() for n, p in finetuned.model.named_parameters()}, str(path))

    @classmethod
    def _from_checkpoint(cls, path: Path, run_identity: dict | None) -> FinetunedWeights:
        from mllmft.checkpoint_match import check_checkpoint, read_checkpoint

        checkpoint = read_checkpoint(path)
        if run_identity is not None:  # the checkpoint's base must be this θ0 (its frozen rest is θ0's)
            check_checkpoint(checkpoint, run_identity, path, resuming=False)
        prefix = "model."
        tensors = {k[len(prefix) :]: v for k, v in checkpoint.get("state_dict", {}).items() if k.startswith(prefix)}
        if not tensors:
            raise ConfigError(f"finetuned={path} holds no model tensors")
        return cls(tensors, str(path), strategy=(checkpoint.get("mllmft") or {}).get("strategy"))

    def check_against(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        unknown = sorted(set(self.tensors) - set(params))
        if unknown:
            raise ConfigError(
                f"finetuned={self.source} has {len(unknown)} tensors this model does not have "
                f"(e.g. {unknown[:3]}): was it trained from another model, or with a peft strategy "
                "(merge its export=merged instead)?"
            )
        for name, tensor in self.tensors.items():
            if tuple(tensor.shape) != tuple(params[name].shape):
                raise ConfigError(
                    f"finetuned={self.source}: {name} has shape {list(tensor.shape)}, this model's "
                    f"{list(params[name].shape)}"
                )


def _strategy_of_run(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "results.json").read_text())["run"]["strategy"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


@torch.no_grad()
def merge_into(model: nn.Module, method: MergeMethod, finetuned: FinetunedWeights) -> int:
    """Write ``method``'s merge of θ0 (the model's weights) and θ_ft into the model, one tensor at a
    time; returns how many tensors changed."""
    changed = 0
    for name, param in model.named_parameters():
        theta_ft = finetuned.get(name)
        if theta_ft is None:
            continue
        if name in method.written:
            changed += 1
            continue
        merged = method.merge(name, param.detach().float(), theta_ft.to(param.device).float())
        param.copy_(merged.to(param.dtype))
        changed += 1
    return changed
