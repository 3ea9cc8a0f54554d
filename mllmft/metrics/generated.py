"""Scoring generated answers: every prediction gathered from every rank, scored once per epoch.

``GeneratedAnswers`` is a torchmetrics Metric whose state is the list of (index, id, prompt,
prediction, references) of the samples it saw. At ``compute`` the lists of all ranks are gathered
(as Python objects: corpus metrics such as CIDEr need the strings), de-duplicated by sample index
(evaluation shards are padded to equal length, which repeats samples), and scored by the
subclass's ``score`` over the whole set at once: a corpus statistic like CIDEr-D's IDF is never
computed per batch or per rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torchmetrics import Metric


@dataclass(frozen=True)
class Answer:
    """One generated answer with what scores it: the sample's index and id, prompt, prediction, references."""

    index: int
    id: str
    prompt: str
    prediction: str
    references: tuple[str, ...]
    options: tuple[str, ...] = ()  # multiple choice: the options' texts in letter order, when known


class GeneratedAnswers(Metric):
    """Base class: subclasses implement ``score(answers) -> (summary dict, per-sample scores)``.

    The summary's "score" entry (0-100) is the set's headline number; other entries (BLEU-4,
    ROUGE-L, ...) are reported beside it."""

    name = "base"
    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("answers", default=[], dist_reduce_fx=None)
        self.answers: list[Answer]  # add_state made it
        self.last_per_sample: list[tuple[Answer, float]] = []

    def update(self, indices, ids, prompts, predictions, references, options=None) -> None:
        indices = indices.tolist() if isinstance(indices, torch.Tensor) else list(indices)
        options = options if options is not None else [()] * len(indices)
        for refs in references:
            if isinstance(refs, str):  # a lone string would be scored as its characters
                raise TypeError(f"references must be a list of strings per sample, got the string {refs!r}")
        self.answers.extend(
            Answer(int(i), str(d), p, y, tuple(r), tuple(o))
            for i, d, p, y, r, o in zip(indices, ids, prompts, predictions, references, options)
        )

    def _sync_dist(self, dist_sync_fn=None, process_group=None) -> None:
        group = process_group or self.process_group
        gathered: list[list[Answer] | None] = [None] * dist.get_world_size(group)
        dist.all_gather_object(gathered, list(self.answers), group=group)
        self.answers = [a for part in gathered if part is not None for a in part]

    def compute(self) -> dict[str, float]:
        unique = sorted({a.index: a for a in self.answers}.values(), key=lambda a: a.index)
        if not unique:
            return {"score": float("nan"), "samples": 0}
        summary, per_sample = self.score(unique)
        self.last_per_sample = list(zip(unique, per_sample))
        return {**summary, "samples": len(unique)}

    def score(self, answers: list[Answer]) -> tuple[dict[str, float], list[float]]:
        raise NotImplementedError
