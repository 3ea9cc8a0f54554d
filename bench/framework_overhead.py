"""What mllmft-train costs over the loop a researcher would write, side by side in one run.

    python bench/framework_overhead.py                  # the 4.8 M bench model and a ~48 M one
    python bench/framework_overhead.py --models small --steps 40

(a) a bare PyTorch loop: the same model, the same collated batches from the same DataLoader, AdamW
with the same groups' learning rate and cosine schedule, gradient clipping at 1.0 as the trainer
does; forward, backward, clip, step, zero_grad. (b) ``mllmft-train``'s module and trainer with
``strategy=full`` and the default callbacks (checkpointing, progress bar and plain progress, lr
monitor) and the CSV logger. The step time is the wall time between the ends of consecutive steps
(data loading, hooks, logging included), median over the timed steps after warm-up; two rounds in
alternating order, the lower median kept. Prints (b) / (a).
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
from mllmft.module import cosine_factor  # noqa: E402


def _config(model: list[str], steps: int, batch_size: int, out: str):
    return api.compose(
        [
            *model,
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


def framework(model: list[str], steps: int, warmup: int, batch_size: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        parts = api.build(_config(model, steps + warmup + 1, batch_size, out))
        ends = StepEnds()
        parts.trainer.callbacks.append(ends)
        parts.trainer.fit(parts.module, datamodule=parts.datamodule)
        return _median_step(ends.ends, warmup)


def bare_loop(model: list[str], steps: int, warmup: int, batch_size: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        cfg = _config(model, steps + warmup + 1, batch_size, out)
        parts = api.build(cfg)
        net, datamodule = parts.backbone.model, parts.datamodule
        datamodule.setup("fit")
        params = [p for p in net.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.module.lr, betas=tuple(cfg.module.optimizer.betas))
        total = steps + warmup + 1
        schedule = LambdaLR(optimizer, cosine_factor(max(1, int(cfg.module.scheduler.warmup_ratio * total)), total))
        net.train()
        ends, done = [], 0
        while done < total:
            for batch in datamodule.train_dataloader():
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
        return _median_step(ends, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    print(f"{'model':<8} {'bare loop s/step':>17} {'mllmft-train s/step':>20} {'ratio':>7}")
    for name in args.models:
        best = {"bare": float("inf"), "mllmft": float("inf")}
        for order in (("bare", "mllmft"), ("mllmft", "bare")):
            for kind in order:
                run = bare_loop if kind == "bare" else framework
                best[kind] = min(best[kind], run(MODELS[name], args.steps, args.warmup, args.batch_size))
        print(f"{name:<8} {best['bare']:>17.4f} {best['mllmft']:>20.4f} {best['mllmft'] / best['bare']:>7.3f}")


if __name__ == "__main__":
    main()
