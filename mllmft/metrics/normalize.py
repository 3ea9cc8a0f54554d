"""Answer normalisation for exact match: case, punctuation, articles, number words."""

from __future__ import annotations

import re

_NUMBERS = {w: str(i) for i, w in enumerate(
    ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"))}
_ARTICLES = {"a", "an", "the"}
_PUNCT = re.compile(r"(?<!\d)[.,](?!\d)|[;:!?'\"()\[\]{}<>/\\@#$%^&*_+=~`|-]")


def normalize_answer(text: str) -> str:
    """"The Two red circles." -> "2 red circles"; periods and commas inside numbers are kept."""
    text = _PUNCT.sub(" ", text.replace("\n", " ").replace("\t", " ").lower())
    words = [_NUMBERS.get(w, w) for w in text.split() if w not in _ARTICLES]
    return " ".join(words)
