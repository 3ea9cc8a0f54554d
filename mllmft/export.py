"""Exports any transformers user can load, without mllmft.

``export=merged`` writes a standard Hugging Face directory (weights as safetensors + processor):
``AutoModelForImageTextToText.from_pretrained(dir)``. peft adapters are merged into the weights first;
every other strategy's weights already are the fine-tuned model. ``export=adapter`` (peft strategies)
writes peft's adapter directory (adapter config and weights, including ``modules_to_save``) plus the
processor: ``PeftModel.from_pretrained(base_model, dir)``.

An export is whole or absent: it is written into ``.export.tmp`` beside it and renamed at the end, so
a failure (a full disk) leaves no half-written ``export/`` for mllmft-merge to read. ``mllmft.json``
in it records the run's identity (checkpoint_match.run_identity: the base model the weights were
fine-tuned from), which mllmft-merge matches against its base.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import peft
import torch

from mllmft.atomic_io import directory_written_atomically
from mllmft.backbones import Backbone
from mllmft.engines import Engine, FSDP1Engine
from mllmft.errors import ConfigError
from mllmft.strategies import PeftStrategy
from mllmft.strategies.core.contract import TuningStrategy

log = logging.getLogger(__name__)
EXPORTS = ("merged", "adapter")
RECORD = "mllmft.json"  # the export's kind and the identity of the run that wrote it


def check_export(kind: str | None, strategy: TuningStrategy, engine: type[Engine] = Engine) -> None:
    """Refuse, at start-up, an export this run could not write (on ``engine``, the configured one)."""
    if kind is None:
        return
    if kind not in EXPORTS:
        raise ConfigError(f"export={kind!r}; expected one of {EXPORTS} or null")
    if issubclass(engine, FSDP1Engine):
        raise ConfigError(
            f"export={kind} under FSDP1 (hardware.lightning_strategy=fsdp): its flat shards cannot be gathered "
            "into whole tensors here; use hardware=fsdp2 or a deepspeed_* choice"
        )
    strategy = getattr(strategy, "base", strategy)  # CoMMIT wraps the strategy that updates the weights
    if not isinstance(strategy, PeftStrategy):
        if kind == "adapter":
            raise ConfigError(
                f"export=adapter needs a peft strategy (lora, adalora, ...); strategy={strategy.name} "
                "changes the weights themselves: use export=merged"
            )
        return
    if kind == "adapter" and strategy.bare_parameters:
        raise ConfigError(
            f"export=adapter cannot carry {strategy.bare_parameters}: the scope trains them but peft "
            "saves only adapters and whole modules. Use export=merged, or freeze them in the scope"
        )
    if kind == "adapter" and strategy.moves_base:
        raise ConfigError(
            f"export=adapter saves the adapters for the original base, and {strategy.moves_base} (the base in this "
            "run is less that part): use export=merged"
        )
    if kind == "merged" and engine.sharded and strategy.adapter_buffers:
        raise ConfigError(
            f"export=merged under {engine.name}: {strategy.name}'s frozen adapter factors are buffers, which the "
            "sharded export does not gather; export on one device or under DDP"
        )
    if kind == "merged" and not strategy.targets_linears:
        raise ConfigError(
            f"export=merged: {strategy.name}'s virtual tokens cannot be merged into the weights; use export=adapter"
        )


def export_model(backbone: Backbone, kind: str, out_dir: str | Path, engine=None, identity: dict | None = None) -> Path:
    """Write the export, with ``identity`` (the run's) in its record; ``merged`` merges adapters into
    the live model, so call it last. Under a sharded engine every rank must call it: the weights are
    gathered tensor by tensor and rank 0 writes them from an unsharded copy of the model on the host."""
    out = Path(out_dir)
    model = backbone.model
    if engine is not None and engine.sharded:
        weights = engine.full_weights(model)
        if engine.rank() != 0:
            return out
        model = unsharded_copy(model, weights)
    if kind == "merged" and isinstance(model, peft.PeftModel):
        model = model.merge_and_unload()
    if kind == "adapter":  # the base as the user named it (a hub id or a path), not where it was read from
        for config in model.peft_config.values():
            config.base_model_name_or_path = backbone.source
    with directory_written_atomically(out, f"export={kind}") as tmp:
        model.save_pretrained(tmp)
        backbone.processor.save_pretrained(tmp)
        (tmp / RECORD).write_text(json.dumps({"export": kind, "run_identity": identity}, indent=2))
    log.info("export=%s written to %s", kind, out)
    return out


def unsharded_copy(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The same model (a peft one too) on the host, built on the meta device and given the gathered
    weights; its buffers, which no engine shards, come from the live model."""
    copy: Any  # the model's own class (tie_weights ...), or peft's wrapper of it
    if isinstance(model, peft.PeftModel):
        copy = peft.get_peft_model(_meta_copy(model.get_base_model()), model.peft_config[model.active_adapter])
    else:
        copy = _meta_copy(model)
    copy.load_state_dict(weights, strict=False, assign=True)
    for name, live in model.named_buffers():
        owner, _, attr = name.rpartition(".")
        copy.get_submodule(owner)._buffers[attr] = live.detach().cpu().clone()
    if hasattr(copy, "tie_weights"):
        copy.tie_weights()
    missing = [n for n, p in copy.named_parameters() if p.is_meta]
    if missing:
        raise RuntimeError(f"the gathered weights lack {len(missing)} parameters of the model (e.g. {missing[:3]})")
    return copy


def _meta_copy(model: torch.nn.Module) -> torch.nn.Module:
    with torch.device("meta"):
        copy = type(model)(model.config)
    copy.generation_config = model.generation_config
    return copy
