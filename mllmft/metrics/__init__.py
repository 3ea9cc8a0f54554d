"""Metrics of generated answers, one per task type, plus the trade-off scores of a run."""

from mllmft.config import import_object
from mllmft.errors import ConfigError
from mllmft.metrics.captioning import CaptionMetrics, caption_scores
from mllmft.metrics.exact_match import ExactMatch, exact_match
from mllmft.metrics.general import MMBenchCircular, MMEScore, POPEScores, SEEDBenchAccuracy
from mllmft.metrics.generated import Answer, GeneratedAnswers
from mllmft.metrics.multiple_choice import MultipleChoiceAccuracy, parse_choice
from mllmft.metrics.tradeoff import harmonic_mean, tradeoff_scores
from mllmft.metrics.vqa import VQAAccuracy, normalize_vqa_answer, vqa_accuracy

METRICS = {
    m.name: m
    for m in (
        ExactMatch,
        VQAAccuracy,
        MultipleChoiceAccuracy,
        CaptionMetrics,
        POPEScores,
        MMEScore,
        MMBenchCircular,
        SEEDBenchAccuracy,
    )
}


def build_metric(name: str, **args) -> GeneratedAnswers:
    """A set's metric: a built-in one by name (a key of ``METRICS``), or your own as the dotted path of a
    ``GeneratedAnswers`` subclass (``my_package.metrics.MyScore``). ``args`` are the set's
    ``metric_args`` (``mode`` of vqa_accuracy, ``n_options`` of multiple_choice)."""
    if name in METRICS:
        metric = METRICS[name]
    elif "." in name:
        metric = import_object(name, "metric")
        if not (isinstance(metric, type) and issubclass(metric, GeneratedAnswers)):
            raise ConfigError(f"metric {name!r} is not a subclass of mllmft.metrics.GeneratedAnswers")
    else:
        raise ConfigError(
            f"unknown metric {name!r}; expected one of {sorted(METRICS)}, or the dotted path of a "
            "GeneratedAnswers subclass of your own"
        )
    try:
        return metric(**args)
    except TypeError as err:  # an argument the metric does not take
        raise ConfigError(f"metric {name!r} does not take metric_args {dict(args)}: {err}") from err


__all__ = [
    "METRICS",
    "Answer",
    "CaptionMetrics",
    "ExactMatch",
    "GeneratedAnswers",
    "MultipleChoiceAccuracy",
    "VQAAccuracy",
    "build_metric",
    "caption_scores",
    "exact_match",
    "harmonic_mean",
    "normalize_vqa_answer",
    "parse_choice",
    "tradeoff_scores",
    "vqa_accuracy",
]
