"""Exact-match accuracy that scores every sample once, however the samples were sharded."""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from mllmft.metrics.normalize import normalize_answer


def exact_match(prediction: str, references) -> float:
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(r) for r in references))


class ExactMatch(Metric):
    """Mean exact match x 100 over distinct sample indices.

    Evaluation shards are padded so that every rank runs the same number of steps; the padding
    repeats samples, which would be counted twice if scores were summed. Keeping (index, score)
    pairs and de-duplicating after the cross-rank gather counts each sample exactly once.
    """

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("index", default=[], dist_reduce_fx="cat")
        self.add_state("score", default=[], dist_reduce_fx="cat")

    def update(self, index: torch.Tensor, predictions: list[str], references: list) -> None:
        scores = [exact_match(p, r) for p, r in zip(predictions, references)]
        self.index.append(index.to(self.device, torch.long))
        self.score.append(torch.tensor(scores, device=self.device))

    def compute(self) -> dict[str, torch.Tensor]:
        """{"score": mean exact match x 100, "samples": distinct samples scored}, over all ranks."""
        index, score = dim_zero_cat(self.index), dim_zero_cat(self.score)
        order = torch.argsort(index, stable=True)
        index, score = index[order], score[order]
        first = torch.ones_like(index, dtype=torch.bool)
        first[1:] = index[1:] != index[:-1]
        return {"score": score[first].mean() * 100.0, "samples": first.sum()}
