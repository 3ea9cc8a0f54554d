"""A run's parts, built and checked: backbone -> scope -> strategy -> objective -> data -> module -> trainer.

Everything a user can get wrong is checked here, before any evaluation: settings first (before
minutes of model loading), then what needs the model (the scope trains something, the checkpoint
belongs to this model), then every record of the data. ``mllmft.api.build`` returns these parts.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from mllmft.answer_logits import check_head
from mllmft.backbones import (
    Backbone,
    build_tiny,
    check_attention,
    check_family_supports,
    find_family,
    load_pretrained,
    model_dtype,
)
from mllmft.changes import Change, change_from_config
from mllmft.checkpoint_match import LIGHTNING_ALIASES, check_checkpoint, plain_scope, read_checkpoint, run_identity
from mllmft.checkpointing import FreshLastCheckpoint, use_atomic_saves
from mllmft.checks import check_bool, check_run_settings, check_training_length
from mllmft.data.datamodule import check_settings as check_data_settings
from mllmft.engines import check_engine, configured_engine
from mllmft.errors import ConfigError
from mllmft.export import check_export
from mllmft.hardware import on_compute_device
from mllmft.module import check_hyperparameters, fused_refused
from mllmft.objectives import SFT
from mllmft.packing import check_packing
from mllmft.parts import RunParts
from mllmft.pretrain import pretrained_tiny
from mllmft.scope import apply_scope
from mllmft.strategies.core.contract import from_config

if TYPE_CHECKING:
    pass


def pretrain_stage(cfg: DictConfig) -> Path | None:
    """The stage before a run, for a tiny model with ``model.pretrain`` only: teach the random model its
    upstream set once (then cached per config), so that fine-tuning has something to forget. A real
    checkpoint comes pre-trained: None."""
    model = cfg.model
    if model.get("checkpoint") or not model.get("pretrain"):
        return None
    return pretrained_tiny(model.family, model.tiny, model.pretrain, cfg.paths.cache_dir, cfg.hardware.accelerator)


def build_backbone(model: DictConfig, pretrained: Path | None = None) -> Backbone:
    """The checkpoint ``model.checkpoint`` names; else the tiny model, from the checkpoint
    ``pretrain_stage`` made of it, or random; each in ``model.dtype``, recomputing its activations in
    backward with ``model.gradient_checkpointing``."""
    backbone = _load_backbone(model, pretrained)
    if model.get("gradient_checkpointing", False):
        backbone.enable_gradient_checkpointing()
    return backbone


def _load_backbone(model: DictConfig, pretrained: Path | None) -> Backbone:
    dtype = model.get("dtype", "float32")
    if model.get("checkpoint"):
        return load_pretrained(
            model.family,
            model.checkpoint,
            dtype=dtype,
            attn_implementation=model.get("attn_implementation"),
            trust_remote_code=model.get("trust_remote_code", False),
        )
    if pretrained is not None:
        backbone = load_pretrained(
            model.family, pretrained, dtype=dtype, attn_implementation=model.get("attn_implementation")
        )
        backbone.info["pretrain"] = json.loads((pretrained / "pretrain.json").read_text())
        return backbone
    return build_tiny(model.family, model.tiny, dtype, model.get("attn_implementation"))


def _instantiate_all(group: DictConfig | None) -> list:
    return [instantiate(c) for c in (group or {}).values() if c is not None and "_target_" in c]


def check_settings(cfg: DictConfig, strategy, change: Change) -> dict | None:
    """The checks that need no model, in the first seconds: the knobs in range, the strategy fits the
    hardware and the model family, ``ckpt_path`` is a readable checkpoint (returned, to be matched once
    the model is built)."""
    check_hyperparameters(**{k: v for k, v in cfg.module.items() if k in _parameters(check_hyperparameters)})
    check_data_settings(**{k: v for k, v in cfg.data.items() if k in _parameters(check_data_settings)})
    trains = change.trains and strategy.trains
    if trains:
        strategy.check_training(cfg)
        check_training_length(cfg.trainer)
    check_engine(strategy, cfg.hardware.lightning_strategy)
    check_optimizer_engine(cfg.module.get("optimizer"), configured_engine(cfg.hardware.lightning_strategy))
    check_fused_clipping(cfg)
    check_family_supports(cfg.model.family, strategy)
    packing = cfg.module.get("packing", False)
    check_packing(packing, cfg.module.get("pack_tokens"), find_family(cfg.model.family), strategy)
    model_dtype(cfg.model.get("dtype", "float32"))  # a bad name now, not after minutes of pre-training
    check_bool("model.gradient_checkpointing", cfg.model.get("gradient_checkpointing", False))
    on_gpu = cfg.hardware.accelerator in ("gpu", "cuda") or (
        cfg.hardware.accelerator == "auto" and torch.cuda.is_available()
    )
    check_attention(cfg.model.family, cfg.model.get("attn_implementation"), on_gpu, trains)
    path = cfg.get("ckpt_path")
    return read_checkpoint(path) if path and str(path) not in LIGHTNING_ALIASES else None


def check_optimizer_engine(optimizer: DictConfig | None, engine) -> None:
    """An optimizer that works on whole tensors (MoFO's per-tensor filter) refused where the engine hands
    it parts of tensors."""
    target = optimizer.get("_target_") if optimizer is not None else None
    if not target or not engine.sharded:
        return
    from hydra.utils import get_class

    if getattr(get_class(str(target)), "needs_whole_tensors", False):
        raise ConfigError(
            f"module.optimizer={target} filters each whole tensor, and {engine.name} gives the optimizer parts "
            "of tensors: use one device or DDP (hardware=ddp_cpu, or gpu with lightning_strategy=ddp)"
        )


def check_fused_clipping(cfg: DictConfig) -> None:
    """``module.optimizer.fused=true`` refused where Lightning would refuse it at the first step."""
    optimizer = cfg.module.get("optimizer") or {}
    precision, clip = str(cfg.hardware.get("precision", "32")), cfg.trainer.get("gradient_clip_val")
    if optimizer.get("fused") is True and fused_refused(precision, clip):
        raise ConfigError(
            f"module.optimizer.fused=true with hardware.precision={precision} and trainer.gradient_clip_val={clip}: "
            "Lightning's mixed precision does not clip a fused optimizer's gradients; leave fused null (the loop "
            "there), or set trainer.gradient_clip_val=null"
        )


def _parameters(fn) -> set[str]:
    return set(inspect.signature(fn).parameters)


def prepare(cfg: DictConfig, change: Change | None = None) -> RunParts:
    """Build every piece of a run without running it (the notebook API uses this directly); ``change``
    (default: the config's ``change=``) decides whether it trains.

    Everything a user can get wrong is checked here, before any evaluation: settings first (before
    minutes of model loading), then what needs the model (the scope trains something, the
    checkpoint belongs to this model), then every record of the data."""
    check_run_settings(cfg)  # the seed, the trainer's loop, the run directory: before anything uses them
    L.seed_everything(cfg.seed, workers=True)
    change = change or change_from_config(cfg)  # fit, merge (what finetuned= names, found now), evaluate
    strategy = from_config(cfg)
    checkpoint = check_settings(cfg, strategy, change)
    backbone = build_backbone(cfg.model, pretrain_stage(cfg))
    apply_scope(backbone, cfg.scope)
    identity = run_identity(backbone, cfg.scope, strategy.name)  # before the strategy wraps or changes it
    strategy.attach(backbone)
    check_head(backbone.model, cfg.module.get("logits", "answers"))
    check_export(cfg.get("export"), strategy, configured_engine(cfg.hardware.lightning_strategy))
    trains = change.trains and strategy.trains
    objective = instantiate(cfg.objective) if trains and cfg.get("objective") else SFT()
    objective.attach(backbone, configured_engine(cfg.hardware.lightning_strategy))
    if trains and not any(p.requires_grad for p in backbone.model.parameters()):
        raise ConfigError(
            f"nothing to train: the scope {plain_scope(cfg.scope)} with strategy={strategy.name} leaves "
            "no parameter trainable (use strategy=zeroshot to evaluate only)"
        )
    # Live objects go in through partials: Hydra would turn a dataclass kwarg into a config node.
    datamodule = instantiate(cfg.data, _partial_=True)(
        processor=backbone.processor, collator_class=backbone.collator_class
    )
    if datamodule.replay is not None and objective.rewards_with_target_metric:
        raise ConfigError(
            f"objective={objective.name} scores its sampled answers with the target set's metric, which does not "
            "score the replayed samples of other sets: use data.replay with another objective"
        )
    if trains:  # bad data fails here, before any step
        datamodule.setup("fit")
    datamodule.setup("test")
    probe = instantiate(cfg.probe) if trains and cfg.get("probe") else None  # the KL that predicts forgetting
    if probe is not None:
        with on_compute_device(backbone.model) as device:  # the base model, as loaded
            probe.prepare(backbone.model, datamodule, device)
    module = instantiate(cfg.module, _partial_=True)(
        backbone=backbone,
        strategy=strategy,
        scope=cfg.scope,
        test_sets=datamodule.test_sets,
        run_identity=identity,
        objective=objective,
    )
    if checkpoint is not None:
        check_checkpoint(checkpoint, identity, cfg.ckpt_path, resuming=trains, model_state=module.state_dict())
        del checkpoint  # Lightning reads it again where it restores it
    loggers = _instantiate_all(cfg.get("logger"))
    trainer = instantiate(
        cfg.trainer,  # the strategy's own callbacks come from the module (configure_callbacks)
        callbacks=[*_instantiate_all(cfg.get("callbacks")), FreshLastCheckpoint()]
        + ([probe] if probe is not None else []),
        logger=loggers or False,
    )
    use_atomic_saves(trainer)
    return RunParts(backbone, strategy, datamodule, module, trainer, loggers, trains)
