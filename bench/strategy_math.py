"""The selective strategies' own per-step maths, alone: SPIDER's mask and pull-back, GMT's top-k of |g|,
SPU's fixed mask, on the trainable tensors of a tiny model built at a realistic shape.

    python bench/strategy_math.py                     # the ~48 M-parameter config of strategy_overhead.py
    python bench/strategy_math.py --model small --reps 10

``strategy_overhead.py`` measures whole training steps, where on a busy or virtualised machine the
noise of a 2-5 s step hides a 100 ms change; this bench times only what a strategy adds (the hook
that runs between backward and the optimizer step, or after it), on the same tensors, with fresh
random gradients each repetition, and keeps the fastest of ``--reps``. Run it at two commits to
compare an implementation change side by side on one machine.
"""

from __future__ import annotations

import argparse
import os
import time

for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(var, "1")

import torch  # noqa: E402

from mllmft import api  # noqa: E402
from mllmft.engines import Engine  # noqa: E402
from mllmft.strategies import GMT, SPIDER, SPU  # noqa: E402
from mllmft.strategies.core import StepContext  # noqa: E402

MODELS = {
    "small": [
        "model.tiny.text_hidden=256",
        "model.tiny.vision_hidden=128",
        "model.tiny.text_layers=6",
        "model.tiny.vision_layers=4",
        "model.tiny.heads=4",
    ],
    "48M": [
        "model.tiny.text_hidden=576",
        "model.tiny.text_layers=12",
        "model.tiny.vision_hidden=256",
        "model.tiny.vision_layers=4",
        "model.tiny.heads=8",
    ],
}


def fresh_gradients(model: torch.nn.Module, generator: torch.Generator) -> None:
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.randn(p.shape, generator=generator) * 1e-3


def fastest(hook, model, generator, reps: int) -> float:
    times = []
    for _ in range(reps):
        fresh_gradients(model, generator)
        start = time.perf_counter()
        with torch.no_grad():
            hook()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="48M", choices=list(MODELS))
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    cfg = api.compose(
        ["model.pretrain=null", *MODELS[args.model], "logger=none", "callbacks=none", "print_config=false"],
        output_dir="logs/bench/strategy_math",
    )
    model = api.build(cfg).backbone.model
    engine = Engine()
    fragments = engine.fragments(model)
    ctx = StepContext(engine, fragments)
    generator = torch.Generator().manual_seed(0)

    spider = SPIDER()
    spider.capture(engine.full_weights(model, trainable_only=True))
    spider.start(ctx)
    gmt = GMT(keep_ratio=0.2)
    spu = SPU(keep_ratio=0.1)
    spu.window_steps = 0  # straight to the masked phase: the first call chooses, the rest apply
    spu.scores = {f.name: torch.randn(f.size, generator=generator) for f in fragments}
    hooks = {
        "spider (Σ g, then masks + pull-back)": lambda: (spider.before_step(ctx), spider.after_step(ctx)),
        "gmt (before_step: top-k of |g|)": lambda: gmt.before_step(ctx),
        "spu (before_step: fixed mask)": lambda: spu.before_step(ctx),
    }
    spu.before_step(ctx)
    numel = sum(f.numel for f in fragments)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, model {args.model}: "
        f"{numel:,} trainable entries in {len(fragments)} tensors; fastest of {args.reps}"
    )
    for name, hook in hooks.items():
        print(f"{name:42s} {fastest(hook, model, generator, args.reps) * 1e3:9.1f} ms per step")


if __name__ == "__main__":
    main()
