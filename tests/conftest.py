"""Shared test set-up: offline, tiny random models, small data, quiet trainers."""

from __future__ import annotations

import os

for var, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                   "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ[var] = value

import pytest  # noqa: E402
import torch  # noqa: E402

from mllmft import api  # noqa: E402
from mllmft.backbones import build_tiny  # noqa: E402

TINY = {"image_size": 32, "patch_size": 8, "vision_hidden": 32, "vision_layers": 2, "heads": 2,
        "text_hidden": 32, "text_layers": 4, "vocab_size": 400, "max_position_embeddings": 128, "seed": 0}

# A run that takes seconds: random tiny model (no pre-training), small sets, no loggers.
# Smaller than conf/model/tiny_llava.yaml, for speed; only when a test does not pick another model.
SMALL_LLAVA = ["++model.tiny.patch_size=8", "++model.tiny.text_hidden=32", "++model.tiny.vision_hidden=32"]
FAST = [
    "model.pretrain=null",
    "logger=none", "callbacks=none", "print_config=false", "zeroshot_test=false",
    "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.num_sanity_val_steps=0",
    "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false", "data.batch_size=4", "data.eval_batch_size=8",
    "+data.target.sizes={train: 16, val: 8, test: 10}",
]


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)  # 2-core machines: keep forked DDP workers from oversubscribing


@pytest.fixture
def tiny_backbone():
    return build_tiny("llava", TINY)


@pytest.fixture
def compose(tmp_path):
    """compose(*overrides) -> a fast run's config writing under tmp_path."""

    def _compose(*overrides: str, fast: bool = True, config_name: str = "train", run_dir: str = "run"):
        base = FAST if fast else []
        if fast and not any(o.startswith("model=") for o in overrides):
            base = [*base, *SMALL_LLAVA]
        return api.compose([*base, f"paths.cache_dir={tmp_path / 'cache'}", f"paths.log_dir={tmp_path / 'logs'}",
                            *overrides], config_name=config_name, output_dir=tmp_path / run_dir)

    return _compose
