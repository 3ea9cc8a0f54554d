from mllmft.metrics.exact_match import ExactMatch, exact_match
from mllmft.metrics.normalize import normalize_answer
from mllmft.metrics.tradeoff import harmonic_mean, tradeoff_scores

__all__ = ["ExactMatch", "exact_match", "harmonic_mean", "normalize_answer", "tradeoff_scores"]
