"""Post-hoc merging: a method maps the pre-trained θ0 and a fine-tuned θ_ft to new weights, tensor by
tensor, written into the live (θ0) model. No training loop; the evaluation is mllmft-train's.

θ_ft comes from where ``mllmft-train`` left it: a run directory (its ``export/`` if it has one, else
``checkpoints/last.ckpt``), an HF directory (an export, or any checkpoint of the same model) or a
training checkpoint (trainable tensors only: every other tensor of θ_ft is θ0's). A training
checkpoint is read memory-mapped; an HF directory is loaded once beside the live model, so memory
never holds more than one extra copy of the model.

θ_ft must be a fine-tuning of this θ0, checked at start-up, before any evaluation: a checkpoint by its
recorded run identity (checkpoint_match), an HF directory by its model type, every tensor's name and
shape, and the base identity its export recorded (export.RECORD); and it must be whole (an export cut
short by a full disk is passed over for the run's last.ckpt) and finite.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from mllmft.checkpoint_match import check_base, check_checkpoint, read_checkpoint
from mllmft.errors import CheckpointNotFoundError, ConfigError, UserInputError

if TYPE_CHECKING:
    from mllmft.backbones import Backbone
    from mllmft.data import MLLMDataModule

log = logging.getLogger(__name__)


class MergeMethod:
    """``merge(name, theta0, theta_ft) -> merged`` for one tensor (fp32 in, any dtype out); methods
    that need data first get ``prepare(backbone, datamodule, finetuned)`` (the run's base model and data),
    which may write tensors into the model itself (Model Tailor merges block by block, each on the
    inputs of the blocks merged before it) and name them in ``written``."""

    name = "base"
    written: frozenset[str] | set[str] = frozenset()
    calibrates = False  # prepare() reads the target's training data (checked at start-up)

    def prepare(self, backbone: Backbone, datamodule: MLLMDataModule, finetuned: FinetunedWeights) -> None:
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
        return cls.load(*locate_finetuned(path), backbone, run_identity)

    @classmethod
    def load(cls, path: Path, run_strategy: str | None, backbone, run_identity: dict | None) -> FinetunedWeights:
        """θ_ft from what ``locate_finetuned`` found, matched to the base model ``backbone`` (whose
        identity, before any change, is ``run_identity``): one line naming finetuned= if it is not a
        fine-tuning of it."""
        if path.is_dir():
            weights = cls._from_hf(path, backbone, run_identity)
        else:
            weights = cls._from_checkpoint(path, run_identity)
        weights.check_against(backbone.model, whole=path.is_dir())
        weights.check_finite()
        weights.strategy = run_strategy or weights.strategy
        return weights

    @classmethod
    def _from_hf(cls, path: Path, backbone, run_identity: dict | None) -> FinetunedWeights:
        from mllmft.backbones import load_pretrained

        where = f"finetuned={path}"
        model_type = _read_json(path / "config.json", where).get("model_type")
        if model_type != backbone.model.config.model_type:
            raise ConfigError(
                f"{where} holds a {model_type!r} model, not a {backbone.model.config.model_type!r} one: it is "
                f"not a fine-tuning of this run's base model ({backbone.source})"
            )
        recorded = _export_identity(path)
        if recorded is not None and run_identity is not None:  # before minutes of loading another model
            check_base(recorded, run_identity, where, "fine-tuned")
        dtype = str(next(backbone.model.parameters()).dtype).removeprefix("torch.")
        try:
            finetuned = load_pretrained(backbone.family, path, dtype=dtype)
        except UserInputError as err:
            cause = err.__cause__ or err
            raise ConfigError(f"{where}: cannot load it ({type(cause).__name__}: {_first_line(cause)})") from err
        tensors = {n: p.detach() for n, p in finetuned.model.named_parameters()}
        return cls(tensors, str(path), strategy=(recorded or {}).get("strategy"))

    @classmethod
    def _from_checkpoint(cls, path: Path, run_identity: dict | None) -> FinetunedWeights:
        checkpoint = read_checkpoint(path, key="finetuned")
        if run_identity is not None:  # the checkpoint's base must be this θ0 (its frozen rest is θ0's)
            check_checkpoint(checkpoint, run_identity, path, resuming=False, key="finetuned")
        prefix = "model."
        state = checkpoint.get("state_dict")
        tensors = {k[len(prefix) :]: v for k, v in (state or {}).items() if k.startswith(prefix)}
        if not tensors:
            raise ConfigError(f"finetuned={path} holds no model tensors")
        return cls(tensors, str(path), strategy=(checkpoint.get("mllmft") or {}).get("strategy"))

    def check_against(self, model: nn.Module, whole: bool) -> None:
        """Every tensor is one of ``model``'s, of its shape; ``whole`` (an HF directory, not a
        checkpoint of the trainable tensors): every tensor of ``model`` is there too."""
        params = dict(model.named_parameters())
        unknown = sorted(set(self.tensors) - set(params))
        if unknown:
            raise ConfigError(
                f"finetuned={self.source} has {len(unknown)} tensors this model does not have "
                f"(e.g. {unknown[:3]}): was it trained from another model, or with a peft strategy "
                "(merge its export=merged instead)?"
            )
        missing = sorted(set(params) - set(self.tensors)) if whole else []
        if missing:
            raise ConfigError(
                f"finetuned={self.source} lacks {len(missing)} tensors of this model (e.g. {missing[:3]}): "
                "it is another model than this run's base"
            )
        for name, tensor in self.tensors.items():
            if tuple(tensor.shape) != tuple(params[name].shape):
                raise ConfigError(
                    f"finetuned={self.source}: {name} has shape {list(tensor.shape)}, this model's "
                    f"{list(params[name].shape)}"
                )

    def check_finite(self) -> None:
        """A diverged fine-tuning's NaN or infinite weights would merge into a model that scores
        nothing, silently."""
        for name, tensor in self.tensors.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise ConfigError(
                    f"finetuned={self.source}: {name} holds NaN or infinite values (the fine-tuning diverged?)"
                )


def locate_finetuned(path: str | Path) -> tuple[Path, str | None]:
    """What ``finetuned=`` names, found without loading it (at start-up): an HF directory, a training
    checkpoint, or a run directory's complete ``export/`` (else its ``checkpoints/last.ckpt``); and the
    strategy of the run, for a run directory."""
    path = Path(path)
    if path.is_file():
        return path, None
    if not path.is_dir():
        raise CheckpointNotFoundError(f"finetuned={path}: no such file or directory")
    if (path / "config.json").is_file():  # an HF directory
        _check_complete(path, f"finetuned={path}")
        return path, None
    if (path / "adapter_config.json").is_file():
        raise ConfigError(
            f"finetuned={path} is a peft adapter directory (export=adapter): a merge needs whole weights; "
            "give the run directory of a peft run exported with export=merged"
        )
    export, last = path / "export", path / "checkpoints" / "last.ckpt"
    if (export / "config.json").is_file():
        problem = _incomplete(export)
        if problem is None:
            return export, _strategy_of_run(path)
        if not last.is_file():
            raise ConfigError(f"finetuned={path}: its export/ is incomplete ({problem}) and there is no {last}")
        log.warning(
            "finetuned=%s: its export/ is incomplete (%s); merging checkpoints/last.ckpt instead", path, problem
        )
    if last.is_file():
        return last, _strategy_of_run(path)
    if last.is_dir():
        raise ConfigError(
            f"finetuned={path}: its checkpoints/last.ckpt is a sharded checkpoint (FSDP2, DeepSpeed), which a "
            "merge cannot read; train with export=merged and merge the export"
        )
    raise CheckpointNotFoundError(
        f"finetuned={path}: neither an HF directory nor a run directory with export/ or checkpoints/last.ckpt"
    )


# the weights of an HF directory, as save_pretrained writes them: one file, or an index of shards
WEIGHTS = ("model.safetensors", "pytorch_model.bin")
INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def _incomplete(directory: Path) -> str | None:
    """Why an HF directory cannot be whole (a write cut short), or None."""
    for index in INDEXES:
        if (directory / index).is_file():
            weight_map = _read_json(directory / index, f"finetuned={directory}").get("weight_map")
            if not isinstance(weight_map, dict):
                return f"{index} has no weight_map"
            absent = sorted({str(f) for f in weight_map.values()} - {p.name for p in directory.iterdir()})
            return f"{index} lists {len(absent)} missing files (e.g. {absent[0]})" if absent else None
    if not any((directory / name).is_file() for name in WEIGHTS):
        return f"config.json but no weights ({' / '.join(WEIGHTS + INDEXES)})"
    return None


def _check_complete(directory: Path, where: str) -> None:
    problem = _incomplete(directory)
    if problem is not None:
        raise ConfigError(f"{where} is an incomplete HF directory: {problem}")


def _export_identity(directory: Path) -> dict | None:
    """The identity mllmft-train recorded in its export (export.RECORD); None for any other HF directory."""
    from mllmft.export import RECORD

    if not (directory / RECORD).is_file():
        return None
    identity = _read_json(directory / RECORD, f"finetuned={directory}").get("run_identity")
    if identity is not None and not isinstance(identity, dict):
        raise ConfigError(f"finetuned={directory}: {RECORD} holds no run identity (damaged?)")
    return identity


def _read_json(path: Path, where: str) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ConfigError(f"{where}: {path.name} cannot be read ({_first_line(err)})") from err
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {path.name} is not a JSON object")
    return value


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _strategy_of_run(run_dir: Path) -> str | None:
    try:
        strategy = json.loads((run_dir / "results.json").read_text())["run"]["strategy"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return strategy if isinstance(strategy, str) else None


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
