"""The memory switches of a training step, each off and on side by side in one run: peak memory, what the
forward keeps for the backward, step time and tokens per second.

    python bench/memory_switches.py                                # every switch, the small bench LLaVA
    python bench/memory_switches.py --switches logits --vocab 32000 151936
    python bench/memory_switches.py --switches checkpointing --model 48M --batch-size 16

Switches (off → on):
  checkpointing  model.gradient_checkpointing false → true
  logits         module.logits all → answers (the LM head on the answer positions only)
  packing        module.packing false → true (padded batches → samples laid end to end)
  fused          module.optimizer.fused false → true (AdamW's per-tensor loop → its fused kernel, the default)

Each row runs the module's own training forward (``forward_answers``), its backward and the configured
optimizer's step on the same collated batches. Peak: the allocator's high-water mark over one whole step
above what was held before it (``mllmft.memory.peak_allocated_bytes``: the profiler's allocation events;
a CPU has no allocator statistics). Kept: the bytes autograd saves for the backward, weights left out
(``saved_activation_bytes``). Step: the median over the timed steps after warm-up, two rounds in
alternating order, the lower median kept. Tokens/s: the batch's non-padding tokens ÷ step.
``--image-size 96`` gives the bench LLaVA 576 image tokens per sample, as LLaVA-1.5's: a VQA-like
length distribution (a long image prefix, short questions and answers). ``--long-answers`` lengthens each
answer by a long-tailed number of words (log-normal, median 12, 1 in 10 over 70: the shape of an
instruction-tuning mix's answers), where padding is most of a padded batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import random
import statistics
import tempfile
import time

for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(var, "1")

import torch  # noqa: E402
from strategy_overhead import MODELS  # noqa: E402

from mllmft import api  # noqa: E402
from mllmft.data import DigitsSource  # noqa: E402
from mllmft.data.record import Turn  # noqa: E402
from mllmft.memory import peak_allocated_bytes, saved_activation_bytes  # noqa: E402
from mllmft.packing import batch_tokens  # noqa: E402
from mllmft.scope import param_groups  # noqa: E402

SWITCHES = {  # name: (off, on)
    "checkpointing": (["model.gradient_checkpointing=false"], ["model.gradient_checkpointing=true"]),
    "logits": (["module.logits=all"], ["module.logits=answers"]),
    "packing": (["module.packing=false"], ["module.packing=true"]),
    "fused": (["module.optimizer.fused=false"], ["module.optimizer.fused=true"]),
}


class LongTailAnswers(DigitsSource):
    """The built-in digits, each answer followed by a log-normal number of the corpus's words (seeded by
    the record's id): answers of a few words to a few hundred tokens."""

    def records(self, split: str):
        words = " ".join(self.corpus()).split()
        out = []
        for record in super().records(split):
            draw = random.Random(record.id)
            extra = " ".join(draw.choice(words) for _ in range(int(math.exp(draw.gauss(math.log(12), 1.3)))))
            answer = f"{record.turns[-1].text} {extra}"
            out.append(dataclasses.replace(record, turns=(*record.turns[:-1], Turn("assistant", answer))))
        return out


class Step:
    """One configuration's module, optimizer and batches."""

    def __init__(self, overrides: list[str], out: str, batches: int, vocab: int | None = None):
        cfg = api.compose([*overrides, "print_config=false"], output_dir=out)
        parts = api.build(cfg)
        if vocab:  # a real checkpoint's vocabulary: the tiny tokenizer uses the first ids, the head scores all
            _resize_vocabulary(parts.backbone.model, vocab)
        parts.datamodule.setup("fit")
        loader = iter(parts.datamodule.train_dataloader())
        self.module = parts.module
        # as the trainer hands them to the step: packed, if so configured
        self.batches = [self.module.on_after_batch_transfer(next(loader), 0) for _ in range(batches)]
        self.tokens = statistics.mean(batch_tokens(b) for b in self.batches)
        self.module.model.train()
        groups = param_groups(parts.backbone, self.module.scope, self.module.lr, self.module.weight_decay)
        self.optimizer = self.module.make_optimizer(groups, lr=self.module.lr)

    def __call__(self, batch: dict) -> None:
        self.module.forward_answers(batch).loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def kept_bytes(self) -> int:
        batch = self.batches[0]
        loss, kept = saved_activation_bytes(lambda: self.module.forward_answers(batch).loss, self.module.model)
        loss.backward()  # frees what was kept
        self.optimizer.zero_grad(set_to_none=True)
        return kept

    def timed(self, steps: int, warmup: int) -> float:
        times = []
        for i in range(warmup + steps):
            started = time.perf_counter()
            self(self.batches[i % len(self.batches)])
            times.append(time.perf_counter() - started)
        return statistics.median(times[warmup:])


def _resize_vocabulary(model, vocab: int) -> None:
    """The input and output embeddings grown to ``vocab`` rows, trainable as they were."""
    trainable = {n: p.requires_grad for n, p in model.named_parameters()}
    model.resize_token_embeddings(vocab, mean_resizing=False)
    for name, p in model.named_parameters():
        p.requires_grad_(trainable.get(name, False))


def measure(base: list[str], switch: str, args, out: str, vocab: int | None) -> dict[str, dict[str, float]]:
    steps = {
        state: Step([*base, *SWITCHES[switch][i]], out, args.batches, vocab) for i, state in enumerate(("off", "on"))
    }
    result: dict[str, dict[str, float]] = {}
    for state, step in steps.items():
        step(step.batches[0])  # the optimizer's state exists before the peak is taken: a step in steady state
        result[state] = {
            "peak": peak_allocated_bytes(lambda s=step: s(s.batches[0])),
            "kept": step.kept_bytes(),
            "tokens": step.tokens,
            "step": float("inf"),
        }
    for order in (("off", "on"), ("on", "off")):
        for state in order:
            result[state]["step"] = min(result[state]["step"], steps[state].timed(args.steps, args.warmup))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--switches", nargs="+", default=list(SWITCHES), choices=list(SWITCHES))
    parser.add_argument("--model", default="small", choices=sorted(MODELS))
    parser.add_argument(
        "--vocab", nargs="+", type=int, default=[None], help="the vocabulary grown to this (default: the model's)"
    )
    parser.add_argument(
        "--image-size", type=int, default=None, help="model.tiny.image_size (patch 4: 96 = 576 image tokens)"
    )
    parser.add_argument("--long-answers", action="store_true", help="answers of a long-tailed length (LongTailAnswers)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, model {args.model}, batch {args.batch_size}")
    header = ("switch", "vocab", "peak MB off", "on", "on/off", "kept MB off", "on", "step s off", "on", "on/off")
    print(" ".join(f"{h:>12}" for h in (*header, "tok/s off", "on")))
    with tempfile.TemporaryDirectory() as out:
        for vocab in args.vocab:
            base = [*MODELS[args.model], f"data.batch_size={args.batch_size}"]
            if args.image_size is not None:
                base += [f"model.tiny.image_size={args.image_size}"]
            if args.long_answers:
                base += [f"data.target._target_={__name__}.LongTailAnswers"]
            if args.image_size is not None or args.long_answers:  # room for the longer samples
                base += ["data.max_length=4096", "model.tiny.max_position_embeddings=4096"]
            for switch in args.switches:
                r = measure(base, switch, args, out, vocab)
                off, on = r["off"], r["on"]
                row = (
                    switch,
                    vocab or "model's",
                    f"{off['peak'] / 1e6:.1f}",
                    f"{on['peak'] / 1e6:.1f}",
                    f"{on['peak'] / off['peak']:.2f}",
                    f"{off['kept'] / 1e6:.1f}",
                    f"{on['kept'] / 1e6:.1f}",
                    f"{off['step']:.3f}",
                    f"{on['step']:.3f}",
                    f"{on['step'] / off['step']:.2f}",
                    f"{off['tokens'] / off['step']:.0f}",
                    f"{on['tokens'] / on['step']:.0f}",
                )
                print(" ".join(f"{v:>12}" for v in row), flush=True)


if __name__ == "__main__":
    main()
