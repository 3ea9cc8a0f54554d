"""Multiple-choice accuracy (ScienceQA style): the option letter parsed from free text."""

from __future__ import annotations

import re

from mllmft.metrics.generated import Answer, GeneratedAnswers

_PATTERNS = [  # most explicit first: "I think option D" must not read as "I"
    re.compile(r"answer is \(?([A-Z])\)?\b"),  # "The answer is (B)." - LLaVA's ScienceQA format
    re.compile(r"\b(?:option|choice)\s*\(?([A-Z])\)?\b", re.IGNORECASE),
    re.compile(r"^\(?([A-Z])\)?(?:[.):]|\s|$)"),  # "B", "B.", "(B) ...", "B: ..."
]


def parse_choice(text: str, n_options: int | None = None) -> str | None:
    """The option letter a model's answer names, or None if it names none (counted wrong)."""
    text = text.strip()
    for pattern in _PATTERNS:
        match = pattern.search(text)
        if match and (n_options is None or ord(match.group(1).upper()) - ord("A") < n_options):
            return match.group(1).upper()
    return None


class MultipleChoiceAccuracy(GeneratedAnswers):
    """References hold the correct letter ("B"); accuracy x 100 of the parsed letters."""

    name = "multiple_choice"

    def score(self, answers: list[Answer]):
        per_sample = [float(parse_choice(a.prediction) == a.references[0].strip().upper()) for a in answers]
        return {"score": 100.0 * sum(per_sample) / len(per_sample)}, per_sample
