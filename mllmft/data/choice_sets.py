"""Multiple-choice and choose-the-text data sets: ScienceQA (LLaVA format) and IconQA (choose_txt)."""

from __future__ import annotations

import re
from pathlib import Path

from mllmft.data.file_source import FileSource
from mllmft.data.llava_json import llava_record, load_llava_rows
from mllmft.data.record import Record, Turn, single_turn
from mllmft.errors import DataError

_ANSWER_IS = re.compile(r"answer is \(?([A-Z])\)?")
_OPTIONS = re.compile(r"Options:\s*(.*?)\s*(?:\n|$)", re.DOTALL)
_LABEL = re.compile(r"\(([A-Z])\)\s*")


def options_in_text(text: str) -> tuple[str, ...]:
    """The options' texts of LLaVA's ScienceQA prompt line "Options: (A) frog (B) dog", in letter order;
    () when the line is missing or its labels do not run A, B, C..."""
    line = _OPTIONS.search(text)
    if line is None:
        return ()
    parts = _LABEL.split(line.group(1))[1:]  # [letter, text, letter, text, ...]
    letters, texts = parts[0::2], [t.strip() for t in parts[1::2]]
    return tuple(texts) if letters == [chr(ord("A") + i) for i in range(len(letters))] else ()


class ScienceQA(FileSource):
    """ScienceQA in LLaVA's conversation format (``llava_test_CQM-A.json``; the question, context and
    options are in the human turn). ``image_only`` keeps the IMG subset (records with an image), as the
    papers report. The reference is the option letter, from ``problems`` (ScienceQA's
    ``problems.json``: {id: {answer: index}}) when given, else parsed from the answer turn
    ("The answer is B."). The options' texts (for scoring an answer that names the option rather
    than its letter, and bounding the letters) come from ``problems``' choices or the prompt."""

    prompt_fields = None  # a suffix, appended as it is

    metric = "multiple_choice"
    SUFFIX = "Answer with the option's letter from the given choices directly."

    def __init__(self, *args, problems: str | None = None, image_only: bool = True, **kwargs):
        kwargs.setdefault("prompt", self.SUFFIX)
        super().__init__(*args, **kwargs)
        self.problems = problems
        self.image_only = image_only

    def read(self, path: Path, split: str) -> list[Record]:
        rows = [(origin, row) for origin, row in load_llava_rows(path) if row.get("image") or not self.image_only]
        records = [llava_record(origin, row, self.image_root, "multiple_choice") for origin, row in rows]
        problems = self.load_json(self.root / self.problems) if self.problems else None
        out = []
        for r in records:
            options = options_in_text(r.turns[0].text)
            if problems is not None:
                if r.id not in problems:
                    raise DataError(f"{r.where()}: not in {self.problems}")
                letter = chr(ord("A") + problems[r.id]["answer"])
                options = tuple(problems[r.id].get("choices", options))
            else:
                match = _ANSWER_IS.search(r.turns[-1].text)
                if not match:
                    raise DataError(f"{r.where()}: no 'The answer is X' in the answer turn; set `problems`")
                letter = match.group(1)
            question = r.turns[0].text
            if self.prompt and self.prompt not in question:
                question = f"{question}\n{self.prompt}"
            out.append(
                Record(
                    id=f"{self.name}-{r.id}",
                    images=r.images,
                    turns=(Turn("user", question), Turn("assistant", letter)),
                    task="multiple_choice",
                    answers=(letter,),
                    origin=r.origin,
                    options=options,
                    image_root=r.image_root,
                )
            )
        return out


class IconQA(FileSource):
    """IconQA choose_txt: ``files[split]`` is a directory like ``iconqa/test/choose_txt`` holding one
    folder per question with ``data.json`` (question, choices, answer index) and ``image.png``.
    The model answers with the text of the right choice; scored by exact match (as SPIDER does)."""

    prompt_fields = ("question", "choices")

    PROMPT = "{question}\nChoices: {choices}\nAnswer with the text of the correct choice."

    def __init__(self, *args, prompt: str = PROMPT, **kwargs):
        super().__init__(*args, prompt=prompt, **kwargs)

    def read(self, path: Path, split: str) -> list[Record]:
        if not path.is_dir():
            raise DataError(f"data set {self.name!r}: {path} should be a choose_txt directory")
        out = []
        for folder in sorted(p for p in path.iterdir() if p.is_dir()):
            d = self.load_json(folder / "data.json")
            answer = d["choices"][d["answer"]]
            out.append(
                single_turn(
                    f"{self.name}-{folder.name}",
                    folder / "image.png",
                    self.prompt.format(question=d["question"], choices=", ".join(d["choices"])),
                    answer,
                    "vqa",
                    origin=str(folder / "data.json"),
                    image_root=path,
                )
            )
        return out
