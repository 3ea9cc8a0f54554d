"""Gradient checkpointing's trade, side by side in one run: activation memory against step time.

    python bench/activation_memory.py                 # the ~48 M bench model, batch 16
    python bench/activation_memory.py --models small --batch-size 8

For each model, with ``model.gradient_checkpointing`` off and on, on the same collated batches: the bytes
autograd keeps for the backward of one training forward (mllmft/memory.py: its saved-tensor hooks, each
storage once; exact on any device), and the median time of a forward + backward + AdamW step over the
timed steps after warm-up (two rounds in alternating order, the lower median kept). Prints on / off.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(var, "1")

import torch  # noqa: E402
from strategy_overhead import MODELS  # noqa: E402

from mllmft import api  # noqa: E402
from mllmft.memory import saved_activation_bytes  # noqa: E402


def _model(overrides: list[str], checkpointing: bool, batch_size: int, out: str):
    cfg = api.compose(
        [
            *overrides,
            "print_config=false",
            f"data.batch_size={batch_size}",
            f"model.gradient_checkpointing={checkpointing}",
        ],
        output_dir=out,
    )
    parts = api.build(cfg)
    parts.datamodule.setup("fit")
    return parts.backbone.model.train(), list(iter(parts.datamodule.train_dataloader()))


def _measure(net, batches, steps: int, warmup: int) -> tuple[int, float]:
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-5)
    first = batches[0]
    _, saved = saved_activation_bytes(lambda: net(**first["model_inputs"], labels=first["labels"]).loss, net)
    times = []
    for i in range(warmup + steps):
        batch = batches[i % len(batches)]
        started = time.perf_counter()
        net(**batch["model_inputs"], labels=batch["labels"]).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    return saved, statistics.median(times[warmup:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["48M"], choices=sorted(MODELS))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    header = ("saved MB off", "saved MB on", "on/off", "step s off", "step s on", "on/off")
    print(f"{'model':6} " + " ".join(f"{h:>12}" for h in header))
    with tempfile.TemporaryDirectory() as out:
        for name in args.models:
            nets = {gc: _model(MODELS[name], gc, args.batch_size, out) for gc in (False, True)}
            best: dict[bool, tuple[int, float]] = {}
            for order in ((False, True), (True, False)):  # two rounds, alternating: the lower median kept
                for gc in order:
                    saved, step = _measure(*nets[gc], args.steps, args.warmup)
                    best[gc] = (saved, min(step, best.get(gc, (0, float("inf")))[1]))
            (off_b, off_t), (on_b, on_t) = best[False], best[True]
            row = (f"{off_b / 1e6:.1f}", f"{on_b / 1e6:.1f}", f"{on_b / off_b:.2f}", f"{off_t:.3f}", f"{on_t:.3f}")
            print(f"{name:6} " + " ".join(f"{v:>12}" for v in (*row, f"{on_t / off_t:.2f}")))


if __name__ == "__main__":
    main()
