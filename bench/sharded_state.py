"""Per-rank strategy state and step time of every strategy under every engine, side by side in one run.

    python bench/sharded_state.py                               # 2 CPU processes, the bench tiny LLaVA
    python bench/sharded_state.py --engines ddp_cpu fsdp2_cpu --strategies full spider --steps 20
    python bench/sharded_state.py --engines deepspeed_zero3 fsdp2 --devices 8   # a GPU node

Each engine is launched once (``--devices`` processes, as torchrun would: Lightning does not re-launch)
and trains every strategy on the same batches, in two rounds in opposite orders (the lower of the two
is kept, so warm-up and drift of the machine cancel). Printed per strategy and engine: the strategy's
persistent state on each rank in bytes per trainable parameter (the largest rank), and the median
step time (after warm-up; batch start to batch end: forward, backward, the strategy's work, the
optimizer step; the slowest rank) divided by full fine-tuning's under the same engine.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(var, "1")

from strategy_overhead import MODEL as BENCH_MODEL  # noqa: E402  (the bench model: ~4.8 M parameters)

STRATEGIES = ["full", "spider", "magnitude_mask", "gmt", "spu", "l2_sp", "ewc", "commit", "lora"]
ENGINES = ["ddp_cpu", "fsdp2_cpu", "deepspeed_zero2_cpu", "deepspeed_zero3_cpu"]
SCOPE = {"commit": "connector_llm", "lora": "connector_llm"}  # CoMMIT balances both sides; LoRA adapts the LLM


def worker(spec_path: str) -> None:
    import torch
    from strategy_overhead import StepTimer  # the same timing, beside this file

    from mllmft import api

    spec = json.loads(Path(spec_path).read_text())
    rank = int(os.environ["RANK"])
    torch.set_num_threads(spec["threads"])
    for round_, strategy in [(0, s) for s in spec["strategies"]] + [(1, s) for s in reversed(spec["strategies"])]:
        cfg = api.compose(
            [
                *BENCH_MODEL,
                f"strategy={strategy}",
                f"scope={SCOPE.get(strategy, 'all')}",
                f"hardware={spec['engine']}",
                f"hardware.devices={spec['devices']}",
                "logger=none",
                "callbacks=none",
                "print_config=false",
                f"trainer.max_steps={spec['steps'] + spec['warmup']}",
                "trainer.limit_val_batches=0",
                "trainer.enable_progress_bar=false",
                "trainer.enable_model_summary=false",
                f"data.batch_size={spec['batch_size']}",
                "trainer.log_every_n_steps=1000000",
            ],
            output_dir=Path(spec["out"]) / strategy,
        )
        parts = api.build(cfg)
        timer = StepTimer(spec["warmup"])
        parts.trainer.callbacks.append(timer)
        parts.trainer.fit(parts.module, datamodule=parts.datamodule)
        # whole tensors' sizes (a ZeRO-3 parameter's own shape is its empty placeholder's)
        trainable = sum(getattr(p, "ds_numel", p.numel()) for p in parts.backbone.model.parameters() if p.requires_grad)
        result = {
            "step_s": statistics.median(timer.times),
            "trainable": trainable,
            "state_bytes": parts.strategy.state_nbytes(),
        }
        (Path(spec["out"]) / f"{strategy}.round{round_}.rank{rank}.json").write_text(json.dumps(result))


def launch(engine: str, args, out: Path) -> dict[str, list[dict]]:
    out.mkdir(parents=True, exist_ok=True)
    spec = out / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "engine": engine,
                "strategies": args.strategies,
                "steps": args.steps,
                "warmup": args.warmup,
                "batch_size": args.batch_size,
                "devices": args.devices,
                "threads": args.threads,
                "out": str(out),
            }
        )
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "WORLD_SIZE": str(args.devices),
        "NODE_RANK": "0",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", str(spec)],
            cwd=out,
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=(out / f"rank{r}.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        for r in range(args.devices)
    ]
    if any(p.wait() for p in procs):
        sys.exit(f"{engine} failed: see {out}/rank*.log")

    def measured(strategy: str, round_: int) -> list[dict]:
        return [json.loads((out / f"{strategy}.round{round_}.rank{r}.json").read_text()) for r in range(args.devices)]

    # per strategy, the round whose slowest rank was faster
    return {
        s: min((measured(s, 0), measured(s, 1)), key=lambda ranks: max(r["step_s"] for r in ranks))
        for s in args.strategies
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--engines", nargs="+", default=ENGINES, help="hardware choices (conf/hardware)")
    parser.add_argument("--strategies", nargs="+", default=STRATEGIES)
    parser.add_argument("--devices", type=int, default=2, help="processes per engine")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker)
    args.strategies = ["full", *[s for s in args.strategies if s != "full"]]
    root = Path(tempfile.mkdtemp(prefix="mllmft-sharded-bench-"))
    results = {engine: launch(engine, args, root / engine) for engine in args.engines}
    print(
        f"\n{args.devices} processes per engine, batch {args.batch_size} per rank, {args.steps} timed steps; "
        "state: bytes per trainable parameter on the largest rank; step: median ÷ full's under that engine"
    )
    print(f"{'strategy':16s}" + "".join(f" {e:>26s}" for e in args.engines))
    print(f"{'':16s}" + "".join(f" {'state B/param   step ÷ full':>26s}" for _ in args.engines))
    for strategy in args.strategies:
        cells = []
        for engine in args.engines:
            ranks = results[engine][strategy]
            state = max(r["state_bytes"] for r in ranks) / ranks[0]["trainable"]
            step = max(r["step_s"] for r in ranks) / max(r["step_s"] for r in results[engine]["full"])
            cells.append(f" {state:14.2f} {step:11.2f}")
        print(f"{strategy:16s}" + "".join(cells))


if __name__ == "__main__":
    main()
