"""Helpers the tests share (``from tests.helpers.runs import FAST``); importing any of them makes the
process offline (Hugging Face, W&B), as the whole suite is."""

import os

for var, value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ[var] = value
