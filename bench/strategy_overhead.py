"""Step time and state memory of every strategy, side by side in one run, against full fine-tuning.

    python bench/strategy_overhead.py                 # CPU, a ~4 M-parameter tiny LLaVA
    python bench/strategy_overhead.py --steps 40 --strategies full spider
    python bench/strategy_overhead.py --scope connector_llm --strategies full lora dora adalora vera ia3 \
        prompt_tuning prefix_tuning
    python bench/strategy_overhead.py --strategies full --objectives dft eaft asft   # objective= with full

Each strategy trains the same model on the same batches (digits, scope=all); the step time is the
median over the timed steps (after warm-up) of the wall time from batch start to batch end, i.e.
forward + backward + the strategy's own work + the optimizer step. The strategies are measured in
two rounds in alternating order and the lower median is kept, so slow drift of the machine cancels.
Prints the ratio to full fine-tuning, the trainable parameters, the strategy's persistent state in
bytes per trainable parameter, and the optimizer's state (AdamW moments) in bytes, measured on the
optimizer after the run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(var, "1")

import lightning as L  # noqa: E402
import torch  # noqa: E402

from mllmft import api  # noqa: E402

STRATEGIES = [
    "full",
    "spider",
    "magnitude_mask",
    "random_mask",
    "gmt",
    "spu",
    "hft",
    "model_dowser",
    "l1_sp",
    "l2_sp",
    "ewc",
]
MODEL = [
    "model.pretrain=null",
    "model.tiny.text_hidden=256",
    "model.tiny.vision_hidden=128",
    "model.tiny.text_layers=6",
    "model.tiny.vision_layers=4",
    "model.tiny.heads=4",
]
# the bench model (4.8 M parameters) and a ~48 M one, closer to the shapes where a strategy's per-tensor work shows
MODELS = {
    "small": MODEL,
    "48M": [
        "model.pretrain=null",
        "model.tiny.text_hidden=576",
        "model.tiny.text_layers=12",
        "model.tiny.vision_hidden=256",
        "model.tiny.vision_layers=4",
        "model.tiny.heads=8",
    ],
}


class StepTimer(L.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.times, self._start = warmup, [], 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx >= self.warmup:
            self.times.append(time.perf_counter() - self._start)


def measure(
    strategy: str,
    steps: int,
    warmup: int,
    batch_size: int,
    scope: str,
    extra: tuple[str, ...] = (),
    model: list[str] = MODEL,
) -> dict:
    cfg = api.compose(
        [
            *model,
            f"strategy={strategy}",
            f"scope={scope}",
            *extra,
            "logger=none",
            "callbacks=none",
            "print_config=false",
            f"trainer.max_steps={steps + warmup}",
            "trainer.limit_val_batches=0",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            f"data.batch_size={batch_size}",
            "trainer.log_every_n_steps=1000000",
        ],
        output_dir=f"logs/bench/{strategy}",
    )
    parts = api.build(cfg)
    timer = StepTimer(warmup)
    parts.trainer.callbacks.append(timer)
    parts.trainer.fit(parts.module, datamodule=parts.datamodule)
    trainable = sum(p.numel() for p in parts.backbone.model.parameters() if p.requires_grad)
    optimizer_bytes = sum(
        t.numel() * t.element_size()
        for state in parts.trainer.optimizers[0].state.values()
        for t in state.values()
        if torch.is_tensor(t) and t.ndim > 0
    )
    return {
        "step_s": statistics.median(timer.times),
        "mean_step_s": statistics.fmean(timer.times),
        "trainable": trainable,
        "state_bytes_per_param": parts.strategy.state_nbytes() / trainable,
        "optimizer_bytes": optimizer_bytes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", nargs="+", default=STRATEGIES)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--scope", default="all", help="one scope for every strategy (peft: connector_llm)")
    parser.add_argument("--model", default="small", choices=list(MODELS))
    parser.add_argument("--objectives", nargs="*", default=[], help="objective= choices, each with strategy=full")
    args = parser.parse_args()
    # (row, strategy, overrides): the strategies with objective=sft, then full with each objective
    rows = [(s, s, ()) for s in ["full", *[s for s in args.strategies if s != "full"]]]
    rows += [(f"full + {o}", "full", (f"objective={o}",)) for o in args.objectives]
    names = [row for row, _, _ in rows]
    best: dict[str, dict] = {}
    for order in (rows, rows[::-1]):
        for name, strategy, extra in order:
            result = measure(
                strategy, args.steps, args.warmup, args.batch_size, args.scope, extra, model=MODELS[args.model]
            )
            if name not in best or result["step_s"] < best[name]["step_s"]:
                best[name] = result
    full = best["full"]["step_s"]
    print(
        f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"model {args.model}, scope={args.scope}, batch {args.batch_size}"
    )
    print(f"{'strategy':16s} {'step ms':>9s} {'÷ full':>8s} {'trainable':>11s} {'state B/param':>14s} {'optim MB':>9s}")
    for name in names:
        r = best[name]
        print(
            f"{name:16s} {1000 * r['step_s']:9.1f} {r['step_s'] / full:8.3f} {r['trainable']:11,d} "
            f"{r['state_bytes_per_param']:14.2f} {r['optimizer_bytes'] / 2**20:9.2f}"
        )


if __name__ == "__main__":
    main()
