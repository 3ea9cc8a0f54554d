"""Metrics equal to their reference implementations, gathered and scored once per set."""

import shutil

import pytest
import torch

from mllmft.metrics import (
    CaptionMetrics,
    ExactMatch,
    MultipleChoiceAccuracy,
    VQAAccuracy,
    exact_match,
    harmonic_mean,
    normalize_vqa_answer,
    parse_choice,
    tradeoff_scores,
    vqa_accuracy,
)
from mllmft.metrics.captioning import simple_tokenize


def _update(metric, rows, start=0):
    n = len(rows)
    metric.update(
        torch.arange(start, start + n),
        [f"id{i}" for i in range(start, start + n)],
        ["q"] * n,
        [p for p, _ in rows],
        [r for _, r in rows],
    )


@pytest.mark.parametrize(
    "raw, normal",
    [
        ("Two dogs.", "2 dogs"),
        ("  The Seven\n", "7"),
        ("dont know", "don't know"),
        ("yes!", "yes"),
        ("3.5", "3.5"),
        ("1,000", "1000"),
        ("a man's hat", "man's hat"),
        ("none", "0"),
        ("red/blue", "red blue"),
    ],
)
def test_vqa_normalisation(raw, normal):
    assert normalize_vqa_answer(raw) == normal


@pytest.mark.parametrize("matches, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_leave_one_out_ladder(matches, expected):
    answers = ["dog"] * matches + ["cat", "cow", "pig", "hen", "fox", "owl", "bee", "elk", "yak", "ram"][: 10 - matches]
    assert vqa_accuracy("dog", answers) == pytest.approx(expected)


def test_vqa_accuracy_conventions_differ_only_on_agreeing_answers():
    agreeing = ["yes"] * 10
    assert vqa_accuracy("Yes.", agreeing, mode="always") == 1.0
    assert vqa_accuracy("Yes.", agreeing, mode="official") == 0.0  # GT-Vision-Lab: raw strings compared
    disagreeing = ["two"] * 5 + ["2"] * 3 + ["3", "three"]
    assert vqa_accuracy("2", disagreeing, mode="official") == vqa_accuracy("2", disagreeing, mode="always") == 1.0
    assert vqa_accuracy("no", ["no"]) == 1.0  # one reference: exact match


def test_exact_match_and_metric_count_each_sample_once():
    assert exact_match("A handwritten seven.", ["a handwritten 7"]) == 1.0
    assert exact_match("red circle", ["red circles"]) == 0.0
    metric = ExactMatch()
    _update(metric, [("a", ["a"]), ("b", ["b"]), ("x", ["c"])])
    metric.update(torch.tensor([2, 0]), ["id2", "id0"], ["q", "q"], ["x", "a"], [["c"], ["a"]])  # padding repeats
    result = metric.compute()
    assert result["samples"] == 3 and result["score"] == pytest.approx(200 / 3)
    assert [s for _, s in metric.last_per_sample] == [1.0, 1.0, 0.0]


def test_vqa_metric_and_multiple_choice():
    metric = VQAAccuracy()
    _update(metric, [("dog", ["dog"] * 3 + ["cat"] * 7), ("cat", ["cat"] * 10)])
    assert metric.compute()["score"] == pytest.approx(95.0)
    assert parse_choice("The answer is (B).") == "B" and parse_choice("C") == "C" and parse_choice("(A) a cat") == "A"
    assert parse_choice("I think option d") == "D" and parse_choice("no idea") is None
    assert parse_choice("E", n_options=4) is None
    mc = MultipleChoiceAccuracy()
    _update(mc, [("The answer is B.", ["B"]), ("A", ["C"])])
    assert mc.compute()["score"] == 50.0


CORPUS = {  # the reference corpus decides CIDEr-D's IDF: "a dog" is common here, "frisbee" is rare
    0: ("a dog catches a frisbee", ["a dog catching a frisbee", "a brown dog jumps for a frisbee"]),
    1: ("a dog on the grass", ["a dog lies on the grass", "a dog resting on green grass"]),
    2: ("a cat on a sofa", ["a cat sleeping on a sofa", "a grey cat on the couch"]),
    3: ("a dog", ["a dog running on a beach", "a dog by the sea"]),
    4: ("two people riding horses", ["two people ride horses on a trail", "riders on two horses"]),
}


def _reference_scores(tokenize):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    res = tokenize({k: [p] for k, (p, _) in CORPUS.items()})
    gts = tokenize({k: refs for k, (_, refs) in CORPUS.items()})
    return (
        Bleu(4).compute_score(gts, res, verbose=0)[0],
        Rouge().compute_score(gts, res)[0],
        Cider().compute_score(gts, res)[0],
    )


def _caption_metric(tokenizer):
    metric = CaptionMetrics(tokenizer=tokenizer)
    rows = [CORPUS[k] for k in sorted(CORPUS)]
    _update(metric, rows[:2])  # several batches: scored once, whole, at compute
    _update(metric, rows[2:], start=2)
    return metric.compute(), metric


def _check_equal(result, tokenize):
    bleu, rouge, cider = _reference_scores(tokenize)
    for n in range(4):
        assert result[f"BLEU-{n + 1}"] == pytest.approx(100 * bleu[n], abs=1e-9)
    assert result["ROUGE-L"] == pytest.approx(100 * rouge, abs=1e-9)
    assert result["CIDEr"] == pytest.approx(100 * cider, abs=1e-9) and result["score"] == result["CIDEr"]


def test_caption_scores_equal_pycocoevalcap_with_the_python_tokenizer():
    result, metric = _caption_metric("simple")
    _check_equal(result, simple_tokenize)
    assert metric.tokenizer_used == "simple" and result["ptb_tokenizer"] == 0.0
    # CIDEr-D's IDF depends on the whole reference set: scoring halves separately gives other numbers
    from pycocoevalcap.cider.cider import Cider

    half = {k: v for k, v in CORPUS.items() if k < 2}
    gts = simple_tokenize({k: refs for k, (_, refs) in half.items()})
    res = simple_tokenize({k: [p] for k, (p, _) in half.items()})
    whole_first_two = sum(s for (a, s) in metric.last_per_sample if a.index < 2) / 2
    assert abs(100 * Cider().compute_score(gts, res)[0] - whole_first_two) > 1.0


@pytest.mark.skipif(shutil.which("java") is None, reason="PTBTokenizer needs java")
def test_caption_scores_equal_pycocoevalcap_with_the_ptb_tokenizer():
    from mllmft.metrics.captioning import ptb_tokenize

    result, metric = _caption_metric("auto")
    assert metric.tokenizer_used == "ptb" and result["ptb_tokenizer"] == 1.0
    _check_equal(result, ptb_tokenize)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs java")
def test_meteor_when_asked():
    from mllmft.metrics import caption_scores

    scores, _, _ = caption_scores({0: "a dog"}, {0: ["a dog running", "a dog"]}, meteor=True)
    assert 0 < scores["METEOR"] <= 100


def test_tradeoff_scores():
    zs = tradeoff_scores(0.0, [90.0])
    assert zs == {"S_t": 0.0, "S_u": 90.0, "H": 0.0}
    ft = tradeoff_scores(80.0, [40.0, 60.0], zs)
    assert ft["S_u"] == 50.0 and ft["H"] == pytest.approx(2 * 80 * 50 / 130)
    assert (ft["E"], ft["F"], ft["O"]) == (80.0, -40.0, 40.0)
    assert harmonic_mean(0.0, 0.0) == 0.0
