"""The test loop's generation speed against calling ``model.generate`` directly, side by side in one run.

    python bench/generation.py                        # the 4.8 M bench model, the digits test set
    python bench/generation.py --samples 256 --max-new-tokens 16

(a) ``model.generate`` on the test set's batches exactly as the test loop collates them (left
padding, greedy, the same max_new_tokens and pad token), in a plain loop; (b) ``trainer.test`` on
the same set (generation, decoding, scoring, predictions file). Samples per second of each, the
better of two rounds in alternating order; prints (b) / (a).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(var, "1")

import torch  # noqa: E402
from strategy_overhead import MODEL  # noqa: E402

from mllmft import api  # noqa: E402


def _parts(samples: int, batch_size: int, max_new_tokens: int, out: str) -> dict:
    cfg = api.compose(
        [
            *MODEL,
            "strategy=zeroshot",
            "~data.upstream.shapes",
            "print_config=false",
            "logger=none",
            f"+data.target.sizes={{train: 16, val: 8, test: {samples}}}",
            f"data.eval_batch_size={batch_size}",
            f"module.max_new_tokens={max_new_tokens}",
        ],
        output_dir=out,
    )
    return api.build(cfg)


def direct(samples: int, batch_size: int, max_new_tokens: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        parts = _parts(samples, batch_size, max_new_tokens, out)
        model, tokenizer = parts.backbone.model.eval(), parts.backbone.processor.tokenizer
        loader = parts.datamodule.test_dataloader()[0]
        started, seen = time.perf_counter(), 0
        with torch.no_grad():
            for batch in loader:
                inputs = batch["model_inputs"]
                output = model.generate(
                    **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
                )
                tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
                seen += len(batch["ids"])
        return seen / (time.perf_counter() - started)


def test_loop(samples: int, batch_size: int, max_new_tokens: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        parts = _parts(samples, batch_size, max_new_tokens, out)
        parts.module.test_phase = "final"
        started = time.perf_counter()
        parts.trainer.test(parts.module, datamodule=parts.datamodule, verbose=False)
        seconds = time.perf_counter() - started
        return parts.trainer.callback_metrics["test/samples_per_s"].item(), samples / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()
    best = {"generate": 0.0, "test": 0.0, "test_reported": 0.0}
    for order in (("generate", "test"), ("test", "generate")):
        for kind in order:
            if kind == "generate":
                best["generate"] = max(best["generate"], direct(args.samples, args.batch_size, args.max_new_tokens))
            else:
                reported, wall = test_loop(args.samples, args.batch_size, args.max_new_tokens)
                best["test"], best["test_reported"] = max(best["test"], wall), max(best["test_reported"], reported)
    print(
        f"model.generate: {best['generate']:.1f} samples/s   trainer.test: {best['test']:.1f} samples/s "
        f"(its own test/samples_per_s: {best['test_reported']:.1f})   ratio {best['test'] / best['generate']:.3f}"
    )


if __name__ == "__main__":
    main()
