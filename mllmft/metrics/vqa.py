"""VQA accuracy with the official VQA evaluation rules (GT-Vision-Lab ``vqaEval.py``), written anew.

Normalisation of an answer: newlines/tabs -> spaces, strip; punctuation (removed when it touches a
space or the text has a thousands comma, else replaced by a space); periods not inside numbers
removed; lower case; number words -> digits ("none" -> "0"); articles dropped; contractions restored
("dont" -> "don't").

Accuracy of one prediction against n (usually 10) human answers: the mean over the n leave-one-out
subsets of min(1, #matches among the other n-1 / 3), x 100 by the metric.

Two conventions are offered, chosen per data set (``metric_args: {mode: official}`` on a source):
* ``"always"`` (default): EvalAI's answer processor (as lmms-eval's TextVQA and VizWiz tasks apply
  it) on the prediction AND on every human answer: word tokenisation first (lower case, "," and "?"
  deleted, "'s" split off as " 's"), then the normalisation above. Identical strings always match.
* ``"official"`` (GT-Vision-Lab ``vqaEval.py``): prediction and answers are normalised only when the
  human answers disagree; otherwise the raw stripped strings are compared ("Yes" vs ten "yes" is 0).
With a single human answer there is no leave-one-out subset: the score is exact match of the two
(normalised as the mode says).
"""

from __future__ import annotations

import re

from mllmft.errors import ConfigError
from mllmft.metrics.generated import Answer, GeneratedAnswers

CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}
NUMBERS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = {"a", "an", "the"}
PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: the official pattern (its look-behind is a no-op)
_THOUSANDS_COMMA = re.compile(r"(\d)(,)(\d)")
MODES = ("always", "official")


def process_punctuation(text: str) -> str:
    out = text
    for p in PUNCTUATION:
        if (p + " " in text or " " + p in text) or _THOUSANDS_COMMA.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out)


def process_digit_article(text: str) -> str:
    words = [NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_vqa_answer(text: str) -> str:
    """The official script's normalisation (punctuation, periods, digits, articles, contractions)."""
    return process_digit_article(process_punctuation(_clean(text)))


def word_tokenize(text: str) -> str:
    """EvalAI's first step: lower case, "," and "?" deleted (not spaced: "red,blue" -> "redblue"),
    "'s" split off."""
    return text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()


def evalai_answer(text: str) -> str:
    """EvalAI's answer processor: word tokenisation, then the official normalisation."""
    return normalize_vqa_answer(word_tokenize(text))


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def vqa_accuracy(prediction: str, answers, mode: str = "always") -> float:
    """Accuracy in [0, 1] of one prediction against the human answers (leave-one-out, min(1, n/3))."""
    check_mode(mode)
    if isinstance(answers, str):  # a lone string would be read as its characters
        raise TypeError(f"VQA accuracy needs a list of reference answers, got the string {answers!r}")
    gts = [_clean(a) for a in answers]
    if not gts:
        raise ValueError("VQA accuracy needs at least one reference answer")
    pred = _clean(prediction)
    if mode == "always":
        pred, gts = evalai_answer(pred), [evalai_answer(a) for a in gts]
    elif len(set(gts)) > 1:  # official: normalise only when the humans disagree
        pred, gts = normalize_vqa_answer(pred), [normalize_vqa_answer(a) for a in gts]
    if len(gts) == 1:  # a single reference: plain exact match (no leave-one-out subset exists)
        return float(pred == gts[0])
    accs = [min(1.0, sum(g == pred for j, g in enumerate(gts) if j != i) / 3.0) for i in range(len(gts))]
    return sum(accs) / len(accs)


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"vqa_accuracy mode={mode!r}; expected one of {MODES}")


class VQAAccuracy(GeneratedAnswers):
    """Official VQA accuracy x 100 over a set; ``mode``: "always" | "official" (see above)."""

    name = "vqa_accuracy"

    def __init__(self, mode: str = "always"):
        super().__init__()
        check_mode(mode)
        self.mode = mode

    def score(self, answers: list[Answer]):
        per_sample = [vqa_accuracy(a.prediction, a.references, self.mode) for a in answers]
        return {"score": 100.0 * sum(per_sample) / len(per_sample)}, per_sample
