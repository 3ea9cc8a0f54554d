"""Helpers the tests share (``from tests.helpers.runs import FAST``); importing any of them makes the
process offline (Hugging Face, W&B), as the whole suite is, and every process it starts one-threaded:
``make test`` runs one pytest worker per core, so a second thread per process would only contend (a
notebook kernel with two OpenMP threads beside another worker ran 5 times slower)."""

import os

for var, value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ[var] = value
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")
