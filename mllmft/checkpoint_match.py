"""A training checkpoint must belong to the run that loads it.

A checkpoint holds only the trainable tensors; the frozen rest comes from ``model.checkpoint`` (or
the tiny builder). Resumed into another base model it would train or evaluate a hybrid while
results.json names the new base. So every checkpoint records its run's identity: the family, the
base model's source, a hash of its parameter names and shapes (the architecture) and a fingerprint
of its pre-trained values, the scope, and the strategy. At start-up, before anything is evaluated,
``check_checkpoint`` reads ``ckpt_path`` (weights only) and compares: any difference is one line
naming both sides. Resuming training also requires the same strategy; evaluating a checkpoint
(``mllmft-eval``) does not, since it only reads the trained tensors.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from mllmft.errors import CheckpointNotFoundError, ConfigError

LIGHTNING_ALIASES = ("last", "best", "hpc", "registry")  # resolved by Lightning itself, checked when loaded
DCP_METADATA = "meta.pt"  # a distributed (FSDP2) checkpoint is a directory; its non-tensor part is here
# a DeepSpeed checkpoint is a directory too: <tag>/ holds the ranks' files, rank 0's with Lightning's state
DEEPSPEED_STATES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")


def architecture_hash(model: nn.Module) -> str:
    spec = [(name, list(p.shape)) for name, p in model.named_parameters()]
    return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:16]


def weights_fingerprint(model: nn.Module, sample: int = 16) -> str:
    """A hash of the first and last ``sample`` values of every parameter, rounded to bfloat16 so that
    loading the same checkpoint in another dtype gives the same fingerprint. Cheap for 7B models:
    32 values per tensor; taken before any training step changes them."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.detach().reshape(-1)
            values = torch.cat([flat[:sample], flat[-sample:]]).to("cpu", torch.bfloat16).float()
            digest.update(name.encode())
            digest.update(values.numpy().tobytes())
    return digest.hexdigest()[:16]


def run_identity(backbone, scope: Mapping, strategy: str) -> dict:
    """What a checkpoint of this run records (call before the strategy wraps or trains the model)."""
    return {
        "family": backbone.family,
        "backbone_source": backbone.source,
        "architecture": architecture_hash(backbone.model),
        "weights": weights_fingerprint(backbone.model),
        "scope": plain_scope(scope),
        "strategy": strategy,
    }


def plain_scope(scope: Mapping) -> dict:
    """The scope as plain data, as a checkpoint stores it."""
    if OmegaConf.is_config(scope):
        plain = OmegaConf.to_container(scope, resolve=True)
        assert isinstance(plain, dict)
        return plain
    return json.loads(json.dumps(dict(scope)))


def read_checkpoint(path: str | Path, key: str = "ckpt_path") -> dict:
    """A Lightning checkpoint, loaded weights-only (tensors memory-mapped): a missing, truncated or
    foreign file is a one-line error naming the config ``key`` that gave it."""
    path = Path(path)
    if path.is_dir():
        path = _state_file_of(path, key)
    elif not path.is_file():
        raise CheckpointNotFoundError(f"{key}={path}: no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"{key}={path} is not a readable checkpoint (truncated, corrupted, or not a "
            f"weights-only Lightning checkpoint): {first}"
        ) from err
    sharded = path.name in (DCP_METADATA, *DEEPSPEED_STATES)  # their tensors are elsewhere
    if not isinstance(checkpoint, dict) or (not sharded and "state_dict" not in checkpoint):
        raise ConfigError(f"{key}={path} is not a Lightning checkpoint (no state_dict)")
    return checkpoint


def _state_file_of(directory: Path, key: str) -> Path:
    """The file of a sharded checkpoint directory that holds Lightning's state (and our identity)."""
    if (directory / DCP_METADATA).is_file():
        return directory / DCP_METADATA
    tag = (directory / "latest").read_text().strip() if (directory / "latest").is_file() else "checkpoint"
    for name in DEEPSPEED_STATES:
        if (directory / tag / name).is_file():
            return directory / tag / name
    raise ConfigError(
        f"{key}={directory} is a directory but neither a distributed (FSDP2) checkpoint (no "
        f"{DCP_METADATA}) nor a DeepSpeed one (no {tag}/*model_states.pt)"
    )


def check_checkpoint(
    checkpoint: dict,
    identity: dict,
    path,
    resuming: bool,
    model_state: Mapping[str, torch.Tensor] | None = None,
    key: str = "ckpt_path",
) -> None:
    """Refuse a checkpoint of another model, scope or (when resuming) strategy, or whose tensors do
    not fit this run's (``model_state``: the module's state dict); ``key`` names the config key that
    gave ``path``."""
    where = f"{key}={path}"
    saved = checkpoint.get("mllmft")
    if not isinstance(saved, dict) or "weights" not in saved:
        raise ConfigError(
            f"{where} records no mllmft run identity (written by another program or an "
            "older mllmft): it cannot be matched to this run's model"
        )
    check_base(saved, identity, where, "trained")
    if saved.get("scope") != identity["scope"]:
        raise ConfigError(
            f"{where} was trained with scope {saved.get('scope')}; this run's scope is "
            f"{identity['scope']}: set the same scope"
        )
    if resuming and saved.get("strategy") != identity["strategy"]:
        raise ConfigError(
            f"{where} was trained with strategy={saved.get('strategy')}; this run resumes it "
            f"with strategy={identity['strategy']}: set strategy={saved.get('strategy')}"
        )
    if model_state is not None and "state_dict" in checkpoint:
        unknown = [name for name in checkpoint["state_dict"] if name not in model_state]
        if unknown:  # loading with strict=False would drop them silently: the base model, not the run's
            raise ConfigError(
                f"{where} holds {len(unknown)} tensors this run's model does not have (e.g. "
                f"{unknown[0]}): it was trained with strategy={saved.get('strategy')}; set "
                f"strategy={saved.get('strategy')} with the run's knobs to load it"
            )
        for name, tensor in checkpoint["state_dict"].items():
            if name in model_state and tuple(tensor.shape) != tuple(model_state[name].shape):
                raise ConfigError(
                    f"{where}: tensor {name} has shape {list(tensor.shape)}, this run's {list(model_state[name].shape)}"
                )


def check_base(saved: Mapping, identity: Mapping, where: str, made: str) -> None:
    """Refuse what was ``made`` ("trained", "fine-tuned") from another model or other base weights than
    this run's, as the recorded identity ``saved`` says."""
    if saved.get("family") != identity["family"] or saved.get("architecture") != identity["architecture"]:
        raise ConfigError(f"{where} is of another model: {_model(saved)}; this run builds {_model(identity)}")
    if saved.get("weights") != identity["weights"]:
        raise ConfigError(
            f"{where} was {made} from other base weights: {saved.get('backbone_source')} "
            f"(weights {saved.get('weights')}); this run loads {identity['backbone_source']} "
            f"(weights {identity['weights']})"
        )


def _model(identity: Mapping) -> str:
    return (
        f"{identity.get('family')} from {identity.get('backbone_source')} (architecture {identity.get('architecture')})"
    )
