# make install train   -> set up a fresh machine and run the main job (offline)
# make test            -> the fast test suite (installs first if needed)
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=offline

.PHONY: install train test test-full test-gpu bench-gpu lint typecheck clean

install: $(STAMP)

# torch first (constraints.txt: 2.13.0, the CPU wheel), then the project with its extras, every
# package at its known-good version from constraints.txt (pyproject.toml states ranges).
$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt torch
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev,eval,data,deepspeed,slurm,search]"
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/mllmft-train $(ARGS)

# one pytest worker per core, at most 4 (JOBS=0: one process, e.g. with ARGS=-s)
JOBS    ?= auto
WORKERS := -n $(JOBS) --maxprocesses 4 --dist worksteal
test: $(STAMP)
	$(BIN)/pytest -q $(WORKERS) $(ARGS)

test-full: $(STAMP)
	$(BIN)/pytest -q $(WORKERS) -m "" $(ARGS)

# on a machine with CUDA (after installing the CUDA build of torch 2.13.0)
test-gpu: $(STAMP)
	$(BIN)/pytest -q -s -m "" tests/test_gpu.py $(ARGS)

# one GPU, a LLaVA-1.5-7B-shaped model with random bf16 weights: tokens/s, MFU, step ÷ full, peak memory
bench-gpu: $(STAMP)
	$(BIN)/python bench/gpu.py $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check mllmft tests bench
	$(BIN)/ruff format --check mllmft tests bench

# mypy on mllmft/ ([tool.mypy] in pyproject.toml); CI runs it with lint before the tests
typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf logs outputs multirun .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
