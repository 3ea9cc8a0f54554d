"""VQA accuracy with the official VQA evaluation rules (GT-Vision-Lab ``vqaEval.py``), written anew.

Normalisation of an answer: newlines/tabs -> spaces, strip; punctuation (removed when it touches a
space or the text has a thousands comma, else replaced by a space); periods not inside numbers
removed; lower case; number words -> digits ("none" -> "0"); articles dropped; contractions restored
("dont" -> "don't").

Accuracy of one prediction against n (usually 10) human answers: the mean over the n leave-one-out
subsets of min(1, #matches among the other n-1 / 3), x 100 by the metric.

Two conventions differ in when the prediction is normalised, and both are offered:
* ``"always"`` (default; EvalAI's answer processor as lmms-eval uses it): the prediction is always
  normalised.
* ``"official"`` (the GT-Vision-Lab script): the prediction is normalised only when the human answers
  disagree; otherwise the raw stripped strings are compared.
In both, the human answers are normalised when they disagree (the data sets store them normalised).
"""

from __future__ import annotations

import re

from mllmft.metrics.generated import Answer, GeneratedAnswers

CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
           "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}
PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
               "?", "!"]
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
    return process_digit_article(process_punctuation(_clean(text)))


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def vqa_accuracy(prediction: str, answers, mode: str = "always") -> float:
    """Accuracy in [0, 1] of one prediction against the human answers (leave-one-out, min(1, n/3))."""
    if mode not in MODES:
        raise ValueError(f"VQA accuracy mode {mode!r}; expected one of {MODES}")
    gts = [_clean(a) for a in answers]
    if not gts:
        raise ValueError("VQA accuracy needs at least one reference answer")
    disagree = len(set(gts)) > 1
    pred = _clean(prediction)
    if mode == "always" or disagree:
        pred = process_digit_article(process_punctuation(pred))
    if disagree:
        gts = [process_digit_article(process_punctuation(a)) for a in gts]
    if len(gts) == 1:  # a single reference: plain exact match (no leave-one-out subset exists)
        return float(pred == gts[0])
    accs = [min(1.0, sum(g == pred for j, g in enumerate(gts) if j != i) / 3.0) for i in range(len(gts))]
    return sum(accs) / len(accs)


class VQAAccuracy(GeneratedAnswers):
    """Official VQA accuracy x 100 over a set; ``mode``: "always" | "official" (see above)."""

    name = "vqa_accuracy"

    def __init__(self, mode: str = "always"):
        super().__init__()
        self.mode = mode

    def score(self, answers: list[Answer]):
        per_sample = [vqa_accuracy(a.prediction, a.references, self.mode) for a in answers]
        return {"score": 100.0 * sum(per_sample) / len(per_sample)}, per_sample
