"""What mllmft-train costs over the loop a researcher would write, side by side in one run.

    python bench/framework_overhead.py                  # the 4.8 M bench model and a ~48 M one
    python bench/framework_overhead.py --models small --steps 40 --mllmft module.optimizer.fused=true

(a) a bare loop as HF's Trainer, LLaMA-Factory and TRL run it: the same model, the same collated batches
from the same DataLoader, the model's own loss (the logits of every position), AdamW with its fused kernel
(``--bare-optimizer loop``: the per-tensor loop) with the same learning rate and cosine schedule, gradient
clipping at 1.0 as the trainer does; forward, backward, clip, step, zero_grad. (b) ``mllmft-train``'s module
and trainer with ``strategy=full``, its defaults (answer-only logits, AdamW as configured) and ``--mllmft``
overrides, the default callbacks (checkpointing, progress bar and plain progress, lr monitor) and the CSV
logger. The step time is the wall time between the ends of consecutive steps (data loading, hooks, logging
included), median over the timed steps after warm-up; two rounds in alternating order, the lower median
kept. The peak: the most bytes allocated at once over the training steps of a separate 4-step run, above
what was held before its first step (``mllmft.memory.PeakAllocated``: the allocator's events; optimizer
state and gradients included). Prints (b) / (a) for both.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(var, "1")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from strategy_overhead import MODELS  # noqa: E402
from torch.optim.lr_scheduler import LambdaLR  # noqa: E402

from mllmft import api  # noqa: E402
from mllmft.memory import PeakAllocated  # noqa: E402
from mllmft.module import cosine_factor  # noqa: E402

MEMORY_STEPS = 4


def _config(model: list[str], steps: int, batch_size: int, out: str, overrides: list[str] = ()):
    return api.compose(
        [
            *model,
            *overrides,
            "strategy=full",
            "print_config=false",
            f"trainer.max_steps={steps}",
            "trainer.limit_val_batches=0",
            f"data.batch_size={batch_size}",
        ],
        output_dir=out,
    )


class StepEnds(L.Callback):
    def __init__(self):
        self.ends: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.ends.append(time.perf_counter())


def _median_step(ends: list[float], warmup: int) -> float:
    return statistics.median(b - a for a, b in zip(ends[warmup:], ends[warmup + 1 :]))


class PeakOverSteps(L.Callback):
    """``PeakAllocated`` from the first training step's start to the last one's end."""

    def __init__(self):
        self.peak = PeakAllocated()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 0:
            self.peak.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == trainer.max_steps:
            self.peak.stop()


def framework(model: list[str], steps: int, warmup: int, batch_size: int, args) -> float:
    """(b): the median step, or with ``steps=0`` the peak bytes over MEMORY_STEPS steps."""
    with tempfile.TemporaryDirectory() as out:
        total = steps + warmup + 1 if steps else MEMORY_STEPS
        parts = api.build(_config(model, total, batch_size, out, args.mllmft))
        probe = StepEnds() if steps else PeakOverSteps()
        parts.trainer.callbacks.append(probe)
        parts.trainer.fit(parts.module, datamodule=parts.datamodule)
        return _median_step(probe.ends, warmup) if isinstance(probe, StepEnds) else probe.peak.bytes


def bare_loop(model: list[str], steps: int, warmup: int, batch_size: int, args) -> float:
    """(a): the median step, or with ``steps=0`` the peak bytes over MEMORY_STEPS steps."""
    with tempfile.TemporaryDirectory() as out:
        total = steps + warmup + 1 if steps else MEMORY_STEPS
        cfg = _config(model, total, batch_size, out)
        parts = api.build(cfg)
        net, datamodule = parts.backbone.model, parts.datamodule
        datamodule.setup("fit")
        params = [p for p in net.parameters() if p.requires_grad]
        fused = args.bare_optimizer == "fused"
        optimizer = torch.optim.AdamW(params, lr=cfg.module.lr, betas=tuple(cfg.module.optimizer.betas), fused=fused)
        schedule = LambdaLR(optimizer, cosine_factor(max(1, int(cfg.module.scheduler.warmup_ratio * total)), total))
        net.train()
        ends, done, peak = [], 0, PeakAllocated()
        while done < total:
            for batch in datamodule.train_dataloader():
                if done == 0 and not steps:
                    peak.start()
                loss = net(**batch["model_inputs"], labels=batch["labels"]).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                ends.append(time.perf_counter())
                done += 1
                if done == total:
                    break
        if not steps:
            peak.stop()
            return peak.bytes
        return _median_step(ends, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--bare-optimizer", choices=["fused", "loop"], default="fused")
    parser.add_argument("--mllmft", nargs="*", default=[], help="overrides of mllmft-train's run")
    args = parser.parse_args()
    print(f"bare loop: AdamW {args.bare_optimizer}; mllmft-train: {' '.join(args.mllmft) or 'defaults'}")
    header = f"{'model':<8} {'bare s/step':>12} {'mllmft s/step':>14} {'ratio':>7}"
    print(f"{header} {'bare MB':>9} {'mllmft MB':>10} {'ratio':>7}")
    for name in args.models:
        runs = {"bare": bare_loop, "mllmft": framework}
        best = {kind: float("inf") for kind in runs}
        for order in (("bare", "mllmft"), ("mllmft", "bare")):
            for kind in order:
                best[kind] = min(best[kind], runs[kind](MODELS[name], args.steps, args.warmup, args.batch_size, args))
        peak = {kind: run(MODELS[name], 0, 0, args.batch_size, args) / 1e6 for kind, run in runs.items()}
        time_ratio, memory_ratio = best["mllmft"] / best["bare"], peak["mllmft"] / peak["bare"]
        print(
            f"{name:<8} {best['bare']:>12.4f} {best['mllmft']:>14.4f} {time_ratio:>7.3f} "
            f"{peak['bare']:>9.1f} {peak['mllmft']:>10.1f} {memory_ratio:>7.3f}"
        )


if __name__ == "__main__":
    main()
