"""Training step time of every tiny model family, side by side in one run (CPU by default).

    python bench/family_step_time.py --steps 20

Each family's tiny config (conf/model/<name>.yaml, random weights: no pre-training) trains on digits
with scope=all and batch 16; the median step time over the timed steps is printed with the model's
parameter count and image tokens per sample.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(var, "1")
sys.path.insert(0, str(Path(__file__).parent))

from strategy_overhead import StepTimer  # noqa: E402

from mllmft import api  # noqa: E402
from mllmft.config import CONF_DIR  # noqa: E402

MODELS = [
    p.stem
    for p in sorted((CONF_DIR / "model").glob("*.yaml"))
    if not p.stem.startswith("_") and api.compose([f"model={p.stem}"]).model.get("tiny") is not None
]


def measure(model: str, steps: int, warmup: int) -> dict:
    cfg = api.compose(
        [
            f"model={model}",
            "model.pretrain=null",
            "scope=all",
            "logger=none",
            "callbacks=none",
            "print_config=false",
            f"trainer.max_steps={steps + warmup}",
            "trainer.limit_val_batches=0",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            "data.batch_size=16",
        ],
        output_dir=f"logs/bench/{model}",
    )
    parts = api.build(cfg)
    timer = StepTimer(warmup)
    parts.trainer.callbacks.append(timer)
    parts.trainer.fit(parts.module, datamodule=parts.datamodule)
    record = parts.datamodule.split(parts.datamodule.target, "train").records[0]
    collator = parts.backbone.collator(512)
    ids = collator([(0, record, record.load_images())])["model_inputs"]["input_ids"]
    image_tokens = int((ids == collator.image_token_id).sum())
    return {
        "step_s": statistics.median(timer.times),
        "image_tokens": image_tokens,
        "params": sum(p.numel() for p in parts.backbone.model.parameters()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    results = {m: measure(m, args.steps, args.warmup) for m in args.models}
    print(f"\n{'model':22s} {'params':>9s} {'image tok':>10s} {'step ms (batch 16)':>19s}")
    for name, r in results.items():
        print(f"{name:22s} {r['params'] / 1e6:8.2f}M {r['image_tokens']:10d} {1000 * r['step_s']:19.1f}")


if __name__ == "__main__":
    main()
