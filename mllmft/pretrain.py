"""Teach a tiny random model the upstream distribution once, and cache it as an HF checkpoint.

The built-in forgetting benchmark needs a model that already *knows* something (shapes) before it is
fine-tuned on something else (digits). A real MLLM comes pre-trained; a tiny one is pre-trained here,
in a minute or two on a CPU, and saved under ``<cache_dir>/pretrained/<family>-<hash of its config>``
with ``save_pretrained``, so every later run loads it through the same code path as a real checkpoint.

The default model's checkpoint also ships inside the package (``mllmft/pretrained/``, 3.4 MB), so the
main job's first run fine-tunes at once instead of pre-training for minutes; it is found by the same
key (a changed config trains its own) and rebuilt with ``python -m mllmft.pretrain``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

import lightning as L
from filelock import FileLock
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mllmft.backbones import build_tiny
from mllmft.checks import check_directory, check_number, check_seed
from mllmft.data import MLLMDataModule
from mllmft.module import MLLMFineTuner, cosine_with_warmup, logged_test_scores
from mllmft.progress import PlainProgress, StepProgressBar
from mllmft.scope import apply_scope
from mllmft.strategies import FullFineTuning

log = logging.getLogger(__name__)
FORMAT = 1  # bump when the pre-training procedure changes: old caches are then not reused
SHIPPED = Path(__file__).with_name("pretrained")  # the default model's, built by `python -m mllmft.pretrain`
ALL_TRAINABLE = {c: {"train": True} for c in ("vision", "connector", "llm")}


def _plain(x) -> dict:
    plain = OmegaConf.to_container(x, resolve=True) if OmegaConf.is_config(x) else dict(x)
    assert isinstance(plain, dict)
    return plain


def cache_key(family: str, tiny: Mapping, pretrain: Mapping) -> str:
    blob = json.dumps(
        {"family": family, "tiny": _plain(tiny), "pretrain": _plain(pretrain), "format": FORMAT}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def checkpoint_name(family: str, tiny: Mapping, pretrain: Mapping) -> str:
    """The folder name of a pre-trained tiny checkpoint, in the cache and in the package alike."""
    return f"{family}-{cache_key(family, tiny, pretrain)}"


def pretrained_tiny(
    family: str, tiny: Mapping, pretrain: Mapping, cache_dir: str | Path, accelerator: str = "auto"
) -> Path:
    """Path of the pre-trained checkpoint, training it first if this config has none cached."""
    check_pretrain(pretrain)
    root = Path(cache_dir) / "pretrained"
    out = root / checkpoint_name(family, tiny, pretrain)
    if (out / "pretrain.json").is_file():
        return out
    if (SHIPPED / out.name / "pretrain.json").is_file():
        return SHIPPED / out.name
    check_directory("paths.cache_dir", cache_dir)  # before minutes of pre-training that could not be saved
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(root / f".{out.name}.lock"):  # parallel sweep jobs train it once
        if not (out / "pretrain.json").is_file():
            _train_and_save(family, tiny, pretrain, out, accelerator)
    return out


def check_pretrain(pretrain: Mapping) -> None:
    """``model.pretrain``'s numbers, in range: a NaN lr would pre-train for minutes, then cache the NaNs."""
    for key in ("max_steps", "batch_size", "max_length"):
        if key in pretrain:
            check_number(f"model.pretrain.{key}", pretrain[key], 1, integer=True)
    check_number("model.pretrain.lr", pretrain["lr"], 0, low_open=True)
    check_number("model.pretrain.warmup_ratio", pretrain.get("warmup_ratio", 0.05), 0, 1)
    check_seed("model.pretrain.seed", pretrain.get("seed", 0))


def _train_and_save(family: str, tiny: Mapping, pretrain: Mapping, out: Path, accelerator: str) -> None:
    started = time.time()
    log.info("pre-training the tiny %s model on its upstream data (once; cached in %s)", family, out)
    L.seed_everything(pretrain.get("seed", 0), workers=True, verbose=False)
    backbone = build_tiny(family, tiny)
    apply_scope(backbone, ALL_TRAINABLE)
    source = instantiate(pretrain["source"])
    data = MLLMDataModule(
        backbone.processor,
        source,
        batch_size=pretrain["batch_size"],
        eval_batch_size=64,
        max_length=pretrain.get("max_length", 128),
        collator_class=backbone.collator_class,
    )
    schedule = functools.partial(cosine_with_warmup, warmup_ratio=pretrain.get("warmup_ratio", 0.05))
    module = MLLMFineTuner(
        backbone,
        FullFineTuning(),
        ALL_TRAINABLE,
        data.test_sets,
        lr=pretrain["lr"],
        scheduler=schedule,
        max_new_tokens=8,
    )
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    # default_root_dir: the test's predictions file goes with the cached model, not into the cwd
    label = f"pre-training tiny {family}"
    trainer = L.Trainer(
        max_steps=pretrain["max_steps"],
        accelerator=accelerator,
        devices=1,
        default_root_dir=tmp,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
        gradient_clip_val=1.0,
        callbacks=[StepProgressBar(label), PlainProgress(train_label=label)],
        use_distributed_sampler=False,
    )
    trainer.fit(module, datamodule=data)
    trainer.test(module, datamodule=data, verbose=False)
    score = logged_test_scores(trainer, [source.name])[0][source.name]
    backbone.model.save_pretrained(tmp)
    backbone.processor.save_pretrained(tmp)
    report = {
        "family": family,
        "upstream_set": source.name,
        "upstream_test_exact_match": score,
        "steps": pretrain["max_steps"],
        "seconds": round(time.time() - started, 1),
        "tiny": _plain(tiny),
        "pretrain": _plain(pretrain),
        "format": FORMAT,
    }
    (tmp / "pretrain.json").write_text(json.dumps(report, indent=2))
    os.replace(tmp, out)
    log.info("pre-trained tiny %s: %s test exact match %.1f (%.0f s)", family, source.name, score, report["seconds"])


def ship_default_model() -> Path:
    """Pre-train the default config's tiny model into the package (replacing what ships there)."""
    from mllmft.config import compose

    model = compose([]).model
    out = SHIPPED / checkpoint_name(model.family, model.tiny, model.pretrain)
    shutil.rmtree(SHIPPED, ignore_errors=True)
    _train_and_save(model.family, model.tiny, model.pretrain, out, accelerator="cpu")
    shutil.rmtree(out / "predictions", ignore_errors=True)  # the pre-training test's, not needed to load
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(ship_default_model())
