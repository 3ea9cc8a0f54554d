"""Captioning metrics through pycocoevalcap's own scorers: BLEU-1..4, ROUGE-L, CIDEr-D (+ METEOR).

Tokenisation is stated in the results (``tokenizer``):
* ``ptb``: pycocoevalcap's PTBTokenizer (Stanford CoreNLP, needs ``java``), the COCO convention;
* ``simple``: a pure-Python stand-in (lower case, words and punctuation split, PTB's punctuation
  tokens dropped). It differs from PTB on contractions and hyphenation ("don't" stays one token),
  so scores are comparable only between runs that used the same tokenizer.
``auto`` picks ``ptb`` when java is on the PATH. CIDEr-D's IDF comes from the evaluated references,
so the set is scored once, whole (see ``GeneratedAnswers``).
"""

from __future__ import annotations

import re
import shutil

from mllmft.metrics.generated import Answer, GeneratedAnswers

TOKENIZERS = ("auto", "ptb", "simple")
_PTB_PUNCTUATION = {
    "''",
    "'",
    "``",
    "`",
    "-LRB-",
    "-RRB-",
    "-LCB-",
    "-RCB-",
    ".",
    "?",
    "!",
    ",",
    ":",
    "-",
    "--",
    "...",
    ";",
}
_WORDS = re.compile(r"[\w']+|[^\w\s]")


def simple_tokenize(captions: dict[int, list[str]]) -> dict[int, list[str]]:
    def one(text: str) -> str:
        return " ".join(t for t in _WORDS.findall(text.lower()) if t not in _PTB_PUNCTUATION)

    return {k: [one(c) for c in v] for k, v in captions.items()}


def ptb_tokenize(captions: dict[int, list[str]]) -> dict[int, list[str]]:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})


def resolve_tokenizer(name: str) -> str:
    if name not in TOKENIZERS:
        raise ValueError(f"caption tokenizer {name!r}; expected one of {TOKENIZERS}")
    if name == "auto":
        return "ptb" if shutil.which("java") else "simple"
    return name


def caption_scores(
    predictions: dict[int, str], references: dict[int, list[str]], tokenizer: str = "auto", meteor: bool = False
) -> tuple[dict[str, float], list[float], str]:
    """Corpus scores (x 100), per-sample CIDEr-D (x 100, in key order) and the tokenizer used."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    used = resolve_tokenizer(tokenizer)
    tokenize = ptb_tokenize if used == "ptb" else simple_tokenize
    res = tokenize({k: [v] for k, v in predictions.items()})
    gts = tokenize(references)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, cider_per_sample = Cider().compute_score(gts, res)
    scores = {f"BLEU-{n + 1}": 100 * b for n, b in enumerate(bleu)}
    scores.update({"ROUGE-L": 100 * rouge, "CIDEr": 100 * cider})
    if meteor:
        from pycocoevalcap.meteor.meteor import Meteor

        scores["METEOR"] = 100 * Meteor().compute_score(gts, res)[0]
    return scores, [100 * float(c) for c in cider_per_sample], used


class CaptionMetrics(GeneratedAnswers):
    """Headline score: CIDEr-D (x 100); BLEU-1..4, ROUGE-L (and METEOR) beside it."""

    name = "caption"

    def __init__(self, tokenizer: str = "auto", meteor: bool = False):
        super().__init__()
        self.tokenizer = tokenizer
        self.meteor = meteor
        self.tokenizer_used: str | None = None

    def score(self, answers: list[Answer]):
        predictions = {a.index: a.prediction for a in answers}
        references = {a.index: list(a.references) for a in answers}
        scores, per_sample, self.tokenizer_used = caption_scores(predictions, references, self.tokenizer, self.meteor)
        # stated in results.json (details: numbers only): 1 = PTBTokenizer, 0 = the Python stand-in
        return {"score": scores["CIDEr"], **scores, "ptb_tokenizer": float(self.tokenizer_used == "ptb")}, per_sample
