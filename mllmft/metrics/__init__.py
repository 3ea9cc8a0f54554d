"""Metrics of generated answers, one per task type, plus the trade-off scores of a run."""

from mllmft.metrics.captioning import CaptionMetrics, caption_scores
from mllmft.metrics.exact_match import ExactMatch, exact_match
from mllmft.metrics.generated import Answer, GeneratedAnswers
from mllmft.metrics.multiple_choice import MultipleChoiceAccuracy, parse_choice
from mllmft.metrics.tradeoff import harmonic_mean, tradeoff_scores
from mllmft.metrics.vqa import VQAAccuracy, normalize_vqa_answer, vqa_accuracy

METRICS = {m.name: m for m in (ExactMatch, VQAAccuracy, MultipleChoiceAccuracy, CaptionMetrics)}


def build_metric(name: str) -> GeneratedAnswers:
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; expected one of {sorted(METRICS)}")
    return METRICS[name]()


__all__ = ["METRICS", "Answer", "CaptionMetrics", "ExactMatch", "GeneratedAnswers", "MultipleChoiceAccuracy",
           "VQAAccuracy", "build_metric", "caption_scores", "exact_match", "harmonic_mean", "normalize_vqa_answer",
           "parse_choice", "tradeoff_scores", "vqa_accuracy"]
