"""Fixture tables for VQA accuracy and multiple-choice parsing: each expected value derived by hand
from the published rules (GT-Vision-Lab ``vqaEval.py``; EvalAI's answer processor as lmms-eval's
TextVQA/VizWiz tasks apply it; the multiple-choice rules in mllmft/metrics/multiple_choice.py).

VQA cases are (prediction, human answers, accuracy with mode="always", with mode="official").
"""

import pytest

from mllmft.metrics import MultipleChoiceAccuracy, VQAAccuracy, parse_choice, vqa_accuracy


def _ladder(k: int) -> float:
    """k of 10 humans gave the prediction: mean over leave-one-out subsets of min(1, matches / 3)."""
    return (k * min(1.0, (k - 1) / 3) + (10 - k) * min(1.0, k / 3)) / 10


OTHERS = ["cat", "cow", "pig", "hen", "fox", "owl", "bee", "elk", "yak", "ram"]

# Ten humans who agree: "always" normalises both sides; "official" compares the raw stripped strings.
AGREEING = [
    ("Yes", ["Yes"] * 10, 1.0, 1.0),
    ("Yes", ["yes"] * 10, 1.0, 0.0),
    ("yes", ["yes"] * 10, 1.0, 1.0),
    ("Yes.", ["yes"] * 10, 1.0, 0.0),
    ("Yes.", ["Yes."] * 10, 1.0, 1.0),
    ("coca-cola", ["coca-cola"] * 10, 1.0, 1.0),
    ("coca cola", ["coca-cola"] * 10, 1.0, 0.0),
    ("dr. pepper", ["dr. pepper"] * 10, 1.0, 1.0),
    ("dr pepper", ["dr. pepper"] * 10, 1.0, 0.0),
    ("two", ["two"] * 10, 1.0, 1.0),
    ("2", ["two"] * 10, 1.0, 0.0),
    ("the beach", ["the beach"] * 10, 1.0, 1.0),
    ("beach", ["the beach"] * 10, 1.0, 0.0),
    ("red,blue", ["red,blue"] * 10, 1.0, 1.0),
    ("red,blue", ["red blue"] * 10, 0.0, 0.0),  # EvalAI deletes the comma: "redblue"
    ("red blue", ["red,blue"] * 10, 0.0, 0.0),
    ("  yes\n", ["yes"] * 10, 1.0, 1.0),  # both strip whitespace and newlines
    ("no", ["yes"] * 10, 0.0, 0.0),
    ("Dog.", ["dog"] * 10, 1.0, 0.0),
]

# One human answer: no leave-one-out subset exists, so exact match (normalised as the mode says).
SINGLE = [
    ("Yes", ["Yes"], 1.0, 1.0),
    ("yes", ["Yes"], 1.0, 0.0),
    ("Yes.", ["yes"], 1.0, 0.0),
    ("no", ["yes"], 0.0, 0.0),
    ("The Beach", ["beach"], 1.0, 0.0),
    ("2", ["two"], 1.0, 0.0),
]

# k of ten humans gave the prediction, the others distinct words: the leave-one-out ladder.
LADDER = [("dog", ["dog"] * k + OTHERS[: 10 - k], _ladder(k), _ladder(k)) for k in range(1, 10)]
LADDER += [("Dog!", ["dog"] * 3 + OTHERS[:7], 0.9, 0.9)]  # disagreeing humans: both modes normalise

# Normalisation pairs, scored against 4 copies of the reference among 6 other answers: the humans
# disagree, so both modes normalise, and the score is 1 if the two normalise equal, else 0.
# (prediction, reference, equal under "always", equal under "official")
PAIRS = [
    ("Two dogs.", "2 dogs", 1, 1),
    ("The Seven", "7", 1, 1),
    ("dont know", "don't know", 1, 1),
    ("yes!", "yes", 1, 1),
    ("3.5", "3.5", 1, 1),
    ("3.5", "35", 0, 0),  # a period between digits stays
    ("1,000", "1000", 1, 1),  # the thousands comma goes
    ("a man's hat", "man's hat", 1, 1),
    ("mans hat", "man's hat", 0, 0),
    ("none", "0", 1, 1),
    ("red/blue", "red blue", 1, 1),
    ("red, blue", "red blue", 1, 1),  # punctuation next to a space is deleted
    ("red,blue", "red blue", 0, 1),  # EvalAI's word tokenisation deletes the comma first
    ("what?", "what", 1, 1),
    ("it's", "it is", 0, 0),
    ("Ten", "10", 1, 1),
    ("eleven", "11", 0, 0),  # number words stop at ten
    ("an apple", "apple", 1, 1),
    ("e-mail", "e mail", 1, 1),
    ("e-mail", "email", 0, 0),
    ("#1", "1", 0, 0),  # '#' is not in the punctuation list
    ("U.S.", "us", 1, 1),
    ("3.", "3", 1, 1),
    (".5", "0.5", 0, 0),
    ("left side", "left", 0, 0),
    ("yes\tno", "yes no", 1, 1),
    ("isnt", "isn't", 1, 1),
    ("hes", "he's", 0, 1),  # EvalAI splits "he's" into "he 's"; "hes" becomes "he's"
    ("he's", "he's", 1, 1),
    ("Whats up", "what's up", 0, 1),
    ("x-ray", "xray", 0, 0),
    ("100%", "100", 0, 0),
    ("2 1/2", "2 1 2", 1, 1),
    ("one hundred", "100", 0, 0),
    ("red;", "red", 1, 1),
    ("red ;blue", "red blue", 1, 1),
    ("red;blue", "red blue", 1, 1),
    ("red ;blue-green", "red blue green", 1, 1),  # each mark alone: the spaced ";" goes, "-" becomes a space
    ("blue-green", "bluegreen", 0, 0),
    ("1,000 dogs,cats", "1000 dogscats", 1, 1),  # a thousands comma: every comma is deleted
    ("dogs,cats", "dogs cats", 0, 1),
    ("RED", "red", 1, 1),
    ("a", "the", 1, 1),  # articles vanish: both normalise to ""
    ("seven cats", "7 cats", 1, 1),
    ("2 dogs", "two dog", 0, 0),
    ("[yes]", "yes", 1, 1),
    ("<yes>", "yes", 1, 1),
    ("yes_no", "yes no", 1, 1),
    ("don't", "dont", 1, 1),
]
NORMALISED = [(p, [r] * 4 + OTHERS[:6], float(a), float(o)) for p, r, a, o in PAIRS]

SHORT = [  # fewer than ten humans
    ("cat", ["cat", "cat", "dog"], 4 / 9, 4 / 9),
    ("yes", ["yes"] * 4 + ["no"], 1.0, 1.0),
    ("no", ["yes"] * 4 + ["no"], 4 / 15, 4 / 15),
    ("dark red", ["red"] * 7 + ["dark red"] * 3, 0.9, 0.9),
    ("Dark Red.", ["red"] * 7 + ["dark red"] * 3, 0.9, 0.9),
    ("red", ["red"] * 7 + ["dark red"] * 3, 1.0, 1.0),
]

VQA_CASES = AGREEING + SINGLE + LADDER + NORMALISED + SHORT


def test_the_vqa_table_is_large_enough():
    assert len(VQA_CASES) >= 80


@pytest.mark.parametrize("prediction, answers, always, official", VQA_CASES)
def test_vqa_accuracy_follows_the_published_rules(prediction, answers, always, official):
    assert vqa_accuracy(prediction, answers, mode="always") == pytest.approx(always)
    assert vqa_accuracy(prediction, answers, mode="official") == pytest.approx(official)


def test_vqa_references_must_be_a_list():
    with pytest.raises(TypeError, match="list of reference answers"):
        vqa_accuracy("red", "red")
    metric = VQAAccuracy()
    with pytest.raises(TypeError, match="list of strings"):
        metric.update([0], ["id"], ["q"], ["red"], ["red"])


# (answer, options' texts, option count when only the count is known, the letter read or None)
TWO = ("frog", "dog")
FOUR = ("cat", "dog", "black cat", "bird")
MC_CASES = [
    ("B", (), None, "B"),
    ("b", (), None, "B"),
    ("(b)", (), None, "B"),
    ("[C].", (), None, "C"),
    ("**B**", (), None, "B"),
    ("*b*", (), None, "B"),
    ("`A`", (), None, "A"),
    ("B.", (), None, "B"),
    ("(b) dog", TWO, None, "B"),
    ("B. dog", TWO, None, "B"),
    ("b) dog", TWO, None, "B"),
    ("A: frog", TWO, None, "A"),
    ("The answer is b.", (), None, "B"),
    ("The answer is (B).", (), None, "B"),
    ("The answer is B", (), None, "B"),
    ("Answer: C", (), None, "C"),
    ("answer: (c)", (), None, "C"),
    ("The correct choice is C", (), None, "C"),
    ("the correct choice is c.", (), None, "C"),
    ("I think option d", (), None, "D"),
    ("Option (A) is right", (), None, "A"),
    ("The best option would be B, since dogs bark.", (), None, "B"),
    ("I think it's A", (), None, "A"),
    ("So, B.", (), None, "B"),
    ("A dog is on the mat.", (), None, None),  # the article is not option A
    ("I like it", (), None, None),  # the pronoun is not option I
    ("So do I", (), None, None),
    ("the answer is a dog", (), None, None),  # a lower-case article after a marker is no letter
    ("no idea", (), None, None),
    ("", (), None, None),
    ("E", (), 4, None),  # beyond the options
    ("E", (), None, "E"),
    ("e", FOUR, None, None),
    ("The answer is E.", FOUR, None, None),
    ("C", TWO, None, None),
    ("dog", TWO, None, "B"),  # the option's text itself
    ("Dog.", TWO, None, "B"),
    ("It is a dog.", TWO, None, "B"),
    ("A dog is on the mat.", TWO, None, "B"),  # by its text, not by the article
    ("a black cat", FOUR, None, "C"),  # "cat" is part of the longer option that also appears
    ("a cat or a bird", FOUR, None, None),  # two options named: none
    ("frog and dog", TWO, None, None),
    ("Options: (A) frog (B) dog", TWO, None, None),  # the prompt echoed back names every option
    ("Answer with the option's letter from the given choices directly.", (), None, None),
    ("e.g. this one", (), None, None),
    ("The answer is B, not C.", (), None, "B"),  # the first marker wins
    ("(D)", FOUR, None, "D"),
    ("d", FOUR, None, "D"),
]


def test_the_multiple_choice_table_is_large_enough():
    assert len(MC_CASES) >= 40


@pytest.mark.parametrize("answer, options, n_options, expected", MC_CASES)
def test_multiple_choice_parsing_follows_the_rules(answer, options, n_options, expected):
    assert parse_choice(answer, options, n_options) == expected


def test_multiple_choice_metric_uses_each_records_options_and_the_sets_count():
    metric = MultipleChoiceAccuracy()
    metric.update(
        [0, 1, 2], ["a", "b", "c"], ["q"] * 3, ["dog", "E", "The answer is B."], [["B"], ["E"], ["B"]], [TWO, FOUR, ()]
    )
    assert metric.compute()["score"] == pytest.approx(200 / 3)  # "E" is not one of four options
    counted = MultipleChoiceAccuracy(n_options=4)
    counted.update([0], ["a"], ["q"], ["E"], [["E"]])
    assert counted.compute()["score"] == 0.0
