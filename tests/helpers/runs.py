"""Run settings the tests share: fast overrides, a small LLaVA, checkpointing every step, an interrupt."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from mllmft.config import CONF_DIR

TINY = {
    "image_size": 32,
    "patch_size": 8,
    "vision_hidden": 32,
    "vision_layers": 2,
    "heads": 2,
    "text_hidden": 32,
    "text_layers": 4,
    "vocab_size": 400,
    "max_position_embeddings": 128,
    "seed": 0,
}

# the default data's upstream sets (conf/data/digits.yaml): the drawn skills
UPSTREAM = ("shapes", "positions", "counting")
NO_UPSTREAM = tuple(f"~data.upstream.{s}" for s in UPSTREAM)  # data.upstream left empty

# A run that takes seconds: random tiny model (no pre-training), small sets, no loggers.
# Smaller than conf/model/tiny_llava.yaml, for speed; only when a test does not pick another model.
SMALL_LLAVA = ["++model.tiny.patch_size=8", "++model.tiny.text_hidden=32", "++model.tiny.vision_hidden=32"]

FAST = [
    "model.pretrain=null",
    "logger=none",
    "callbacks=none",
    "print_config=false",
    "zeroshot_test=false",
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "trainer.num_sanity_val_steps=0",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "data.batch_size=4",
    "data.eval_batch_size=8",
    "+data.target.sizes={train: 16, val: 8, test: 10}",
    "probe.samples=4",  # the forgetting probe, small (tests/test_kl_probe.py sets its own)
]

# FAST's settings on the default model, pre-trained (the tiny LLaVA the package ships)
FAST_DEFAULT_MODEL = [o for o in FAST if not o.startswith("model.pretrain=")]

# the engine runs and their single-process references share these, so that their steps are comparable;
# with what runs around training by default (the zero-shot test, Lightning's sanity validation, a
# validation mid-run), since each leaves the model in a state of its own (FSDP2's root unit gathered)
EQUAL_STEPS = [
    "trainer.max_steps=3",
    "data.batch_size=2",
    "trainer.gradient_clip_val=null",
    "trainer.log_every_n_steps=1",
    "zeroshot_test=true",
    "trainer.num_sanity_val_steps=1",
    "trainer.val_check_interval=2",
    "module.max_new_tokens=4",
]

CKPT = (
    "+callbacks.ckpt={_target_: lightning.pytorch.callbacks.ModelCheckpoint, "
    "dirpath: ${paths.output_dir}/checkpoints, save_last: true, save_top_k: 0, every_n_train_steps: 1}"
)

ALL_TRAINING_STRATEGIES = sorted(p.stem for p in (CONF_DIR / "strategy").glob("*.yaml") if p.stem != "zeroshot")


class StopAt(L.Callback):
    """Interrupt training after ``step`` optimizer steps (a resume test's first half)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def resume_equals_whole(compose, overrides: list[str], stop_at: int, run_dir: Path):
    """Train ``overrides`` whole; again, interrupted after ``stop_at`` steps (a checkpoint every step, in
    ``run_dir``); resume that: assert the resumed run ends at the whole run's step with its weights, bit
    for bit. Returns the interrupted run's parts (what it held when it stopped)."""
    import torch

    from mllmft import api

    def fit(parts, ckpt_path=None):
        parts.trainer.fit(parts.module, datamodule=parts.datamodule, ckpt_path=ckpt_path)
        return parts

    whole = fit(api.build(compose(*overrides)))
    first = api.build(compose(*overrides, CKPT))
    first.trainer.callbacks.append(StopAt(stop_at))
    fit(first)
    ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    resumed = fit(api.build(compose(*overrides, f"ckpt_path={ckpt}")), ckpt)
    assert resumed.trainer.global_step == whole.trainer.global_step > stop_at
    a, b = whole.backbone.model.state_dict(), resumed.backbone.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    return first
