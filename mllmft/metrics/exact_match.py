"""Exact match after normalisation, against any of the references."""

from __future__ import annotations

from mllmft.metrics.generated import Answer, GeneratedAnswers
from mllmft.metrics.vqa import normalize_vqa_answer


def exact_match(prediction: str, references) -> float:
    """1.0 if the normalised prediction equals a normalised reference (VQA normalisation: punctuation,
    periods, case, number words, articles, contractions), else 0.0."""
    pred = normalize_vqa_answer(prediction)
    return float(any(pred == normalize_vqa_answer(r) for r in references))


class ExactMatch(GeneratedAnswers):
    """Per cent of predictions equal to a reference after VQA normalisation (``exact_match``)."""

    name = "exact_match"

    def score(self, answers: list[Answer]):
        per_sample = [exact_match(a.prediction, a.references) for a in answers]
        return {"score": 100.0 * sum(per_sample) / len(per_sample)}, per_sample
