import pytest
import torch

from mllmft.metrics import ExactMatch, exact_match, harmonic_mean, normalize_answer, tradeoff_scores


@pytest.mark.parametrize("raw, normal", [
    ("Two red circles.", "2 red circles"),
    ("  The Seven\n", "7"),
    ("an apple, please!", "apple please"),
    ("3.5", "3.5"),
    ("1,000", "1,000"),
])
def test_normalize_answer(raw, normal):
    assert normalize_answer(raw) == normal


def test_exact_match_against_any_reference():
    assert exact_match("A handwritten seven.", ["a handwritten 7"]) == 1.0
    assert exact_match("seven", ["eight", "7"]) == 1.0
    assert exact_match("red circle", ["red circles"]) == 0.0


def test_metric_counts_each_sample_once():
    metric = ExactMatch()
    metric.update(torch.tensor([0, 1, 2]), ["a", "b", "x"], [["a"], ["b"], ["c"]])
    metric.update(torch.tensor([2, 0]), ["x", "a"], [["c"], ["a"]])  # padding repeats 2 and 0
    result = metric.compute()
    assert result["samples"].item() == 3
    assert result["score"].item() == pytest.approx(200 / 3)


def test_tradeoff_scores():
    zs = tradeoff_scores(0.0, [90.0])
    assert zs == {"S_t": 0.0, "S_u": 90.0, "H": 0.0}
    ft = tradeoff_scores(80.0, [40.0, 60.0], zs)
    assert ft["S_u"] == 50.0 and ft["H"] == pytest.approx(2 * 80 * 50 / 130)
    assert (ft["E"], ft["F"], ft["O"]) == (80.0, -40.0, 40.0)
    assert harmonic_mean(0.0, 0.0) == 0.0
