"""A metric and a model family of "your own", named by dotted path in a config (tests/test_plugins.py)."""

from __future__ import annotations

import dataclasses
import os
import signal

import lightning as L

from mllmft.backbones.llava import LLAVA
from mllmft.metrics import Answer, GeneratedAnswers


class FirstWordMatch(GeneratedAnswers):
    """Per cent of predictions whose first word is a reference's first word."""

    name = "first_word"

    def score(self, answers: list[Answer]):
        def first(text: str) -> str:
            return (text.split() or [""])[0].lower()

        per_sample = [float(any(first(a.prediction) == first(r) for r in a.references)) for a in answers]
        return {"score": 100.0 * sum(per_sample) / max(1, len(per_sample))}, per_sample


def _build_tiny(spec: dict, corpus: list[str]):
    backbone = LLAVA.build_tiny(spec, corpus)
    backbone.family = "my_llava"
    return backbone


# LLaVA under another name, refusing one strategy: what a family of one's own declares
MY_LLAVA = dataclasses.replace(
    LLAVA,
    name="my_llava",
    build_tiny=_build_tiny,
    unsupported={"hft": "this family's layers are not to be half-frozen"},
)
NOT_A_FAMILY = 42


def answer_length_reward(answers) -> list[float]:
    """A GRPO reward (``objective.reward=tests.helpers.plugins.answer_length_reward``) that tells a random
    model's answers apart, where the target's metric scores them all 0 (advantages 0: nothing to compare)."""
    return [float(len(a.prediction) % 3) for a in answers]


class SignalAt(L.Callback):
    """Sends ``signum`` to its own process at the end of training batch ``batch`` (counted from 0), or with
    ``batch: validation`` at the end of the first validation: a scheduler's pre-emption, delivered by the
    operating system (tests/test_preemption.py)."""

    def __init__(self, batch: int | str, signum: int = signal.SIGTERM):
        self.batch, self.signum, self.sent = batch, signum, False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.batch:
            os.kill(os.getpid(), self.signum)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.batch == "validation" and not self.sent and not trainer.sanity_checking:
            self.sent = True
            os.kill(os.getpid(), self.signum)
