"""Multiple-choice accuracy (ScienceQA, A-OKVQA style): the option a model's free-text answer names.

The reference is the correct option's letter ("B"). A record may carry its options' texts, which
bound the valid letters and let an answer that gives the option's text instead of its letter
count; a set may also state its option count (``metric_args: {n_options: 4}``).

Rules, most explicit first; a letter beyond the options is no answer, never a guess:
1. the whole answer is a letter, in any case, bracketed or not: "B", "b", "(b)", "[C].", "**B**";
2. the whole answer is one option's text ("dog" when an option reads "dog");
3. it starts with a labelled letter: "(b) dog", "B. dog", "c) the cat", "D: red";
4. a marker names it: "The answer is (B)", "Answer: C", "the correct choice is c.", "option D";
   after a marker a lower-case letter counts only when bracketed or ending the clause, so
   "the answer is a dog" reads no letter;
5. it ends with a capital letter standing alone: "I think it's A", "So, B.";
6. exactly one option's text appears in it, as whole words ("It is a dog." when one option is "dog").
A letter inside an ordinary word or sentence is never read: "A dog is on the mat." names no option
by letter (the article is not option A), and "I think it's A" names A, not I.
"""

from __future__ import annotations

import re

from mllmft.errors import ConfigError
from mllmft.metrics.generated import Answer, GeneratedAnswers

_EMPHASIS = re.compile(r"[*_`]+")  # markdown bold / italics / code around a letter
_WHOLE_LETTER = re.compile(r"^[(\[]?([A-Za-z])[)\]]?[.:,!]?$")
_LABELLED = re.compile(r"^(?:[(\[]([A-Za-z])[)\]]|([A-Za-z])[.):])\s+\S")
_MARKER = re.compile(  # the marker words in any case, the letter's case as rule 4 says
    r"\b(?i:answer|choice|option)\b(?:\s+(?i:is|would\s+be|should\s+be|will\s+be))?\s*[:\-]?\s*"
    r"(?:[(\[]([A-Za-z])[)\]]|([A-Z])(?![\w'])|([a-z])(?=\s*(?:[.,;:!)]|$)))"
)
# a bare final "I" is the pronoun ("... so do I"), not option I
_TRAILING = re.compile(r"(?:^|[\s,:;])(?:[(\[]([A-Z])[)\]]|([A-HJ-Z]))[.!]?$")
_WORDS = re.compile(r"[^\w\s]")


def _letter(match: re.Match | None) -> str | None:
    if match is None:
        return None
    return next(g for g in match.groups() if g).upper()


def _plain(text: str) -> str:
    return " ".join(_WORDS.sub(" ", text.lower()).split())


def parse_choice(text: str, options: tuple[str, ...] | list[str] = (), n_options: int | None = None) -> str | None:
    """The option letter a model's answer names, or None if it names none (counted wrong).

    ``options``: the options' texts in letter order (rules 2 and 6; their count bounds the letters);
    ``n_options``: the count alone, when the texts are not known."""
    count = len(options) or n_options

    def valid(letter: str | None) -> str | None:
        return letter if letter is not None and (count is None or ord(letter) - ord("A") < count) else None

    text = _EMPHASIS.sub("", text).strip().strip("\"'").strip()
    plain = _plain(text)
    option_texts = [_plain(o) for o in options]
    found = valid(_letter(_WHOLE_LETTER.match(text)))
    if found is None and plain and plain in option_texts:
        found = chr(ord("A") + option_texts.index(plain))
    found = found or valid(_letter(_LABELLED.match(text)))
    if found is None:
        found = next((letter for m in _MARKER.finditer(text) if (letter := valid(_letter(m)))), None)
    found = found or valid(_letter(_TRAILING.search(text)))
    return found or _named_option(plain, option_texts)


def _named_option(plain: str, option_texts: list[str]) -> str | None:
    """The letter of the only option whose text appears in the answer as whole words (an option that
    is part of another appearing option, "cat" in "black cat", does not count separately)."""
    present = [i for i, o in enumerate(option_texts) if o and re.search(rf"\b{re.escape(o)}\b", plain)]
    present = [i for i in present if not any(j != i and option_texts[i] in option_texts[j] for j in present)]
    return chr(ord("A") + present[0]) if len(present) == 1 else None


class MultipleChoiceAccuracy(GeneratedAnswers):
    """References hold the correct letter ("B"); accuracy x 100 of the parsed letters."""

    name = "multiple_choice"

    def __init__(self, n_options: int | None = None):
        super().__init__()
        if n_options is not None and not 2 <= n_options <= 26:
            raise ConfigError(f"multiple_choice n_options={n_options}; expected 2..26 (letters A-Z)")
        self.n_options = n_options

    def score(self, answers: list[Answer]):
        per_sample = [
            float(parse_choice(a.prediction, a.options, self.n_options) == a.references[0].strip().upper())
            for a in answers
        ]
        return {"score": 100.0 * sum(per_sample) / len(per_sample)}, per_sample
