"""Visual question answering data sets, each read in its published on-disk layout.

The training answer is the set's canonical answer; evaluation scores against all human answers
(VQA accuracy for 10-answer sets, exact match for single-answer ones).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from mllmft.data.file_source import VQA_PROMPT, FileSource
from mllmft.data.record import Record, single_turn
from mllmft.errors import DataError

CHOICE_SUFFIX = "Answer with the option's letter from the given choices directly."  # LLaVA-1.5


def _majority(answers: list[str]) -> str:
    return Counter(answers).most_common(1)[0][0]


def _pattern(pattern: str | Mapping, split: str) -> str:
    return pattern[split] if isinstance(pattern, Mapping) else pattern


def letter_options(choices: list[str]) -> str:
    return "\n".join(f"{chr(ord('A') + i)}. {c}" for i, c in enumerate(choices))


class VQAv2Style(FileSource):
    """VQAv2 / OKVQA: a questions file (``questions[*]``: image_id, question, question_id) per split in
    ``files`` and the matching annotations file (``annotations[*]``: question_id, answers[*].answer,
    multiple_choice_answer) in ``annotations``. Images: ``image_pattern`` (per split or one for all),
    e.g. ``val2014/COCO_val2014_{image_id:012d}.jpg``."""

    metric = "vqa_accuracy"

    def __init__(self, *args, annotations: dict[str, str], image_pattern: str | dict, **kwargs):
        super().__init__(*args, **kwargs)
        self.annotations = dict(annotations)
        self.image_pattern = image_pattern

    def read(self, path: Path, split: str) -> list[Record]:
        if not self.annotations.get(split):
            raise DataError(f"data set {self.name!r} has no {split!r} annotations file")
        anns = {a["question_id"]: a for a in self.load_json(self.root / self.annotations[split])["annotations"]}
        pattern = _pattern(self.image_pattern, split)
        out = []
        for q in self.load_json(path)["questions"]:
            ann = anns.get(q["question_id"])
            if ann is None:
                raise DataError(f"data set {self.name!r}: question {q['question_id']} has no annotation")
            answers = [a["answer"] for a in ann["answers"]]
            target = ann.get("multiple_choice_answer") or _majority(answers)
            out.append(
                single_turn(
                    f"{self.name}-{q['question_id']}",
                    self.image_root / pattern.format(image_id=q["image_id"]),
                    self.prompt.format(question=q["question"]),
                    target,
                    "vqa",
                    answers=tuple(answers),
                    origin=str(path),
                )
            )
        return out


class TextVQA(FileSource):
    """TextVQA ``TextVQA_0.5.1_<split>.json``: ``data[*]`` with question_id, image_id, question,
    answers (10), ocr_tokens; images ``<image_root>/<image_id>.jpg``. The OCR tokens go in the prompt."""

    prompt_fields = ("question", "ocr")

    metric = "vqa_accuracy"
    PROMPT = "{question}\nReference OCR token: {ocr}\nAnswer the question using a single word or phrase."

    def __init__(self, *args, prompt: str = PROMPT, **kwargs):
        super().__init__(*args, prompt=prompt, **kwargs)

    def read(self, path: Path, split: str) -> list[Record]:
        return [
            single_turn(
                f"{self.name}-{d['question_id']}",
                self.image_root / f"{d['image_id']}.jpg",
                self.prompt.format(question=d["question"], ocr=", ".join(d.get("ocr_tokens", []))),
                _majority(d["answers"]),
                "vqa",
                answers=tuple(d["answers"]),
                origin=str(path),
            )
            for d in self.load_json(path)["data"]
        ]


class GQA(FileSource):
    """GQA ``testdev_balanced_questions.json``: {question id: {imageId, question, answer}}; images
    ``<image_root>/<imageId>.jpg``; one answer, exact match."""

    def read(self, path: Path, split: str) -> list[Record]:
        return [
            single_turn(
                f"{self.name}-{qid}",
                self.image_root / f"{q['imageId']}.jpg",
                self.prompt.format(question=q["question"]),
                q["answer"],
                "vqa",
                origin=str(path),
            )
            for qid, q in self.load_json(path).items()
        ]


class OCRVQA(FileSource):
    """OCR-VQA ``dataset.json``: {book id: {imageURL, questions, answers, split (1 train, 2 val, 3 test)}};
    images ``<image_root>/<id><extension of imageURL>``. One file holds every split."""

    SPLITS = {"train": 1, "val": 2, "test": 3}

    def read(self, path: Path, split: str) -> list[Record]:
        out = []
        for book, d in self.load_json(path).items():
            if d["split"] != self.SPLITS[split]:
                continue
            image = self.image_root / f"{book}{Path(d['imageURL']).suffix or '.jpg'}"
            out += [
                single_turn(
                    f"{self.name}-{book}-{j}", image, self.prompt.format(question=q), a, "vqa", origin=str(path)
                )
                for j, (q, a) in enumerate(zip(d["questions"], d["answers"]))
            ]
        return out


class VizWiz(FileSource):
    """VizWiz ``<split>.json``: a list of {image, question, answers[*].answer}; images under image_root."""

    metric = "vqa_accuracy"

    def read(self, path: Path, split: str) -> list[Record]:
        out = []
        for d in self.load_json(path):
            answers = [a["answer"] for a in d.get("answers", [])]
            if not answers:
                raise DataError(
                    f"data set {self.name!r}: {d['image']} has no answers (the VizWiz test split "
                    "is scored on the challenge server)"
                )
            out.append(
                single_turn(
                    f"{self.name}-{Path(d['image']).stem}",
                    self.image_root / d["image"],
                    self.prompt.format(question=d["question"]),
                    _majority(answers),
                    "vqa",
                    answers=tuple(answers),
                    origin=str(path),
                )
            )
        return out


class AOKVQA(FileSource):
    """A-OKVQA ``aokvqa_v1p0_<split>.json``: a list of {question_id, image_id, question, choices,
    correct_choice_idx, direct_answers}; images ``<image_root>/<image_id:012d>.jpg`` (COCO 2017).
    ``mode``: "mc" (options in the prompt, letter answer) or "direct" (VQA accuracy over direct_answers)."""

    prompt_fields = ("question", "options")

    MC_PROMPT = "{question}\n{options}\n" + CHOICE_SUFFIX

    def __init__(self, *args, mode: str = "mc", prompt: str | None = None, **kwargs):
        if mode not in ("mc", "direct"):
            raise DataError(f"A-OKVQA mode {mode!r}; expected 'mc' or 'direct'")
        self.mode = mode
        default_metric = "multiple_choice" if mode == "mc" else "vqa_accuracy"
        kwargs.setdefault("metric", default_metric)
        super().__init__(*args, prompt=prompt or (self.MC_PROMPT if mode == "mc" else VQA_PROMPT), **kwargs)

    def read(self, path: Path, split: str) -> list[Record]:
        out = []
        for d in self.load_json(path):
            image = self.image_root / f"{d['image_id']:012d}.jpg"
            rid = f"{self.name}-{d['question_id']}"
            if self.mode == "mc":
                letter = chr(ord("A") + d["correct_choice_idx"])
                prompt = self.prompt.format(question=d["question"], options=letter_options(d["choices"]))
                out.append(
                    single_turn(
                        rid, image, prompt, letter, "multiple_choice", origin=str(path), options=tuple(d["choices"])
                    )
                )
            else:
                answers = d["direct_answers"]
                out.append(
                    single_turn(
                        rid,
                        image,
                        self.prompt.format(question=d["question"]),
                        _majority(answers),
                        "vqa",
                        answers=tuple(answers),
                        origin=str(path),
                    )
                )
        return out
