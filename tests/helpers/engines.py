"""The engine test matrix (every training strategy; tests/test_contributing.py checks it covers them),
launching the multi-process engine worker as torchrun would, and comparing its weights."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from tests.helpers.shared import once

WORKER = Path(__file__).with_name("engine_worker.py")

ENGINES = {
    "ddp": ["hardware=ddp_cpu"],
    "fsdp2": ["hardware=fsdp2_cpu"],
    "zero2": ["hardware=deepspeed_zero2_cpu"],
    "zero3": ["hardware=deepspeed_zero3_cpu"],
}
# in `make test`: these under every engine, one launch for all (spider and magnitude_mask: the
# strategies that write weights, SPIDER's and the fixed masks' own code)
FAST = {
    "spider": ["strategy=spider"],
    "magnitude_mask": ["strategy=magnitude_mask"],
    "gmt": ["strategy=gmt"],
    "l2_sp": ["strategy=l2_sp", "strategy.lam=1.0"],
    "commit": ["strategy=commit", "scope=connector_llm", "strategy.every_k=1"],
    # replay (each rank's batches: 1 digits + 1 shapes sample) and a token-weighted objective
    "spider_replay_dft": ["strategy=spider", "data.replay={ratio: 0.5}", "objective=dft"],
    # activation checkpointing: recomputation inside FSDP2's units and under ZeRO-3's gathered parameters
    "spider_checkpointing": ["strategy=spider", "model.gradient_checkpointing=true"],
    # padding-free batches, rows of several samples: each rank packs its own (every row above computes
    # answer-only logits, the default)
    "spider_packing": ["strategy=spider", "module.packing=true", "module.pack_tokens=512"],
}
BF16 = {"spider_bf16": ["strategy=spider", "hardware.precision=bf16-mixed"]}  # against fp32: a tolerance
# `pytest -m slow tests/test_engines.py`: every other training strategy (about 3 minutes)
SLOW = {
    "spider_binary": ["strategy=spider", "strategy.mask=binary"],
    "random_mask": ["strategy=random_mask"],
    "spu": ["strategy=spu", "strategy.score_fraction=0.34"],
    "hft": ["strategy=hft"],
    "l1_sp": ["strategy=l1_sp", "strategy.lam=0.01"],
    "ewc": ["strategy=ewc", "strategy.lam=100", "strategy.fisher_batches=2", "+data.upstream.shapes.sizes.train=8"],
    "model_dowser": [
        "strategy=model_dowser",
        "scope=llm_last_n",
        "scope.llm.last_n_layers=2",
        "strategy.sequences=4",
        "strategy.length=8",
        "strategy.passes=2",
    ],
    "full": ["strategy=full"],
    # peft without dropout (each rank would draw its own), LoRA's B not at zero (A moves from step 1)
    "lora": ["strategy=lora", "strategy.init=gaussian", "strategy.dropout=0", "scope=connector_llm"],
    "dora": ["strategy=dora", "strategy.init=gaussian", "strategy.dropout=0", "scope=connector_llm"],
    "vera": ["strategy=vera", "scope=connector_llm"],
    "ia3": ["strategy=ia3", "scope=connector_llm"],
    "prompt_tuning": ["strategy=prompt_tuning", "scope=connector_llm"],
    "prefix_tuning": ["strategy=prefix_tuning", "scope=connector_llm"],
    **{
        name: [f"strategy={name}", "scope=connector_llm", "strategy.every_k=1"]
        for name in ("commit_clr", "constant", "feature_cd", "language_cd")
    },
    "commit_lora": [
        "strategy=commit_lora",
        "strategy.base.init=gaussian",
        "strategy.base.dropout=0",
        "scope=connector_llm",
        "strategy.every_k=1",
    ],
}
# the objectives whose code touches the engine: ASFT's base (adapters disabled), GRPO's sampling
# (generation under every engine; the tiny random model earns no reward, so after its SFT warm-up step
# the steps compare the sampling, re-encoding and the zero-advantage objective)
SLOW |= {
    "lora_asft": [
        "strategy=lora",
        "strategy.init=gaussian",
        "strategy.dropout=0",
        "scope=connector_llm",
        "objective=asft",
    ],
    "eaft": ["strategy=full", "objective=eaft"],
    "spider_grpo": [  # a reward that differs between a random model's answers: non-zero advantages
        "strategy=spider",
        "objective=grpo",
        "objective.sft_warmup_steps=1",
        "objective.group_size=2",
        "objective.max_new_tokens=4",
        "objective.reward=tests.helpers.plugins.answer_length_reward",
    ],
}
# peft's AdaLoRA reads whole parameters and their .grad: refused on shards (tests/test_run.py)
DDP_ONLY = {
    "adalora": ["strategy=adalora", "strategy.dropout=0", "scope=connector_llm"],
    # its regulariser reads whole factors and base weights (refused on the sharded engines); B not at zero
    # (init=false: peft leaves both factors as nn.Linear draws them), or after one step most |B| would tie at
    # ~lr and ZeRO-3's round-off (1e-8) would pick among the ties
    "lorasculpt": ["strategy=lorasculpt", "strategy.dropout=0", "strategy.init=false", "strategy.sparsify_after=1"],
}
SLOW |= {
    # the sparsity alone, chosen across the ranks' parts; KORE's null-space start (built before sharding)
    "lorasculpt_sparse": [
        "strategy=lorasculpt",
        "strategy.car_lambda=0",
        "strategy.dropout=0",
        "strategy.init=false",
        "strategy.sparsify_after=1",
    ],
    "kore": ["strategy=kore", "strategy.samples=4"],
}
MEASURED_PER_RANK = ("commit", "ewc", "commit_clr", "constant", "feature_cd", "language_cd", "commit_lora")


def strategies_in_matrix() -> set[str]:
    """The ``strategy=`` choices the engine tests train."""
    runs = [*FAST.values(), *BF16.values(), *SLOW.values(), *DDP_ONLY.values()]
    return {o.split("=", 1)[1] for overrides in runs for o in overrides if o.startswith("strategy=")}


def launch(out: Path, hardware: list[str], runs: dict[str, list[str]], world: int = 2) -> dict:
    """Run the spec on ``world`` processes; {run: (final trainable weights, [per-rank stats])}."""
    _run_workers(out, hardware, runs, world)
    return _read(out, runs, world)


def _run_workers(out: Path, hardware: list[str], runs: dict, world: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    spec = out / "spec.json"
    spec.write_text(json.dumps({"hardware": hardware, "runs": runs, "out": str(out)}))
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "WORLD_SIZE": str(world),
        "NODE_RANK": "0",
        "OMP_NUM_THREADS": "1",
    }
    logs = [out / f"rank{r}.log" for r in range(world)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(spec)],
            cwd=out,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
        )
        for r, log in enumerate(logs)
    ]
    try:
        codes = [p.wait(timeout=900) for p in procs]
    finally:
        for p in procs:
            p.kill()
    if any(codes):
        raise AssertionError(
            f"{hardware} exited {codes}:\n" + logs[codes.index(next(c for c in codes if c))].read_text()[-4000:]
        )


def launch_once(out: Path, hardware: list[str], runs: dict[str, list[str]], world: int = 2) -> dict:
    """``launch`` for results several pytest workers need (``make test`` runs one per core): the first
    launches, the others wait (idle: the launch's processes use the cores) and read its files. ``out``
    must be shared by the workers and fresh per session (``shared.session_dir``)."""
    once(out, lambda d: _run_workers(d, hardware, runs, world))
    return _read(out, runs, world)


def launch_engines(out: Path, runs_of: dict[str, dict], per_session: bool = False) -> dict[str, dict]:
    """Every engine's runs in one launch, one process group ({engine: {run: ...}}; a run's engine is its
    ``hardware=`` choice): the imports and the group are paid once, not once per engine (44 s instead
    of 93 s for make test's 20 runs on 2 cores). ``per_session``: through ``launch_once``."""
    flat = {f"{engine}__{name}": _on(engine, run) for engine, runs in runs_of.items() for name, run in runs.items()}
    results = (launch_once if per_session else launch)(out, [], flat)
    return {engine: {name: results[f"{engine}__{name}"] for name in runs} for engine, runs in runs_of.items()}


def _on(engine: str, run: list[str] | dict) -> list[str] | dict:
    """A run's overrides (or its {"overrides": [...], "stop_at": N}) with the engine's hardware first."""
    if isinstance(run, dict):
        return {**run, "overrides": [*ENGINES[engine], *run["overrides"]]}
    return [*ENGINES[engine], *run]


def _read(out: Path, runs: dict, world: int) -> dict:
    return {
        name: (
            torch.load(out / f"{name}.pt", weights_only=True),
            [json.loads((out / f"{name}.rank{r}.json").read_text()) for r in range(world)],
        )
        for name in runs
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def relative_deviation(weights: dict, expected: dict, theta0: dict) -> float:
    """‖w − w_ref‖ / ‖w_ref − θ0‖: the share of the reference's update the run did differently."""
    difference = sum(float((weights[k].float() - expected[k].float()).square().sum()) for k in expected)
    update = sum(float((expected[k].float() - theta0[k].float()).square().sum()) for k in expected)
    return (difference / update) ** 0.5
