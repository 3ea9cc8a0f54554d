"""CoMMIT's step-time overhead, side by side in one run: against the `constant` baseline (κ measured
the same way, no scheduling, no auxiliary term) and against plain fine-tuning (no measurement).

    python bench/commit_overhead.py --steps 30

Each measured step costs three extra no-grad forward passes (P_prev, encoder-only, LLM-only), plus
one with the auxiliary term (the reference parameters); at K = 10 that is spread over ten steps.
Same model, data and two alternating rounds as strategy_overhead.py (scope=connector_llm), but the
*mean* step time over the timed steps: a median would skip the measured steps at K = 10. Run with a
number of timed steps divisible by 10.
"""

from __future__ import annotations

import argparse

from strategy_overhead import measure

RUNS = {  # label: (strategy, overrides)
    "full": ("full", ()),
    "constant K=1": ("constant", ("strategy.every_k=1",)),
    "commit K=1": ("commit", ("strategy.every_k=1",)),
    "constant K=10": ("constant", ("strategy.every_k=10",)),
    "commit K=10": ("commit", ("strategy.every_k=10",)),
    "commit_clr K=10": ("commit_clr", ("strategy.every_k=10",)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    best: dict[str, float] = {}
    for order in (list(RUNS), list(RUNS)[::-1]):
        for label in order:
            strategy, extra = RUNS[label]
            step = measure(strategy, args.steps, args.warmup, args.batch_size, "connector_llm", extra)["mean_step_s"]
            best[label] = min(step, best.get(label, step))
    print(f"\nmean step time over {args.steps} steps after {args.warmup} warm-up steps, batch {args.batch_size}")
    print(f"{'run':16s} {'step ms':>8s} {'÷ full':>7s} {'÷ constant (same K)':>20s}")
    for label, step in best.items():
        k = label.split()[-1] if "K=" in label else None
        constant = best.get(f"constant {k}") if k else None
        versus = f"{step / constant:20.3f}" if constant else f"{'':20s}"
        print(f"{label:16s} {1000 * step:8.1f} {step / best['full']:7.3f} {versus}")


if __name__ == "__main__":
    main()
