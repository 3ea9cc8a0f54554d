"""Launching the multi-process engine worker as torchrun would, and comparing its weights."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

WORKER = Path(__file__).with_name("engine_worker.py")


def launch(out: Path, hardware: list[str], runs: dict[str, list[str]], world: int = 2) -> dict:
    """Run the spec on ``world`` processes; {run: (final trainable weights, [per-rank stats])}."""
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
