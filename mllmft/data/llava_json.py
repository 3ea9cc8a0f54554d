"""Reader for LLaVA-style conversation files (the format of LLaVA's and DataOptim's training sets).

A file is a JSON list or JSONL of objects::

    {"id": "0001", "image": "coco/000000123.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat is the man holding?"},
                       {"from": "gpt", "value": "A kite."}],
     "answers": ["kite", "kite", "a kite"],   # optional: references for scoring (else the last answer)
     "task": "vqa"}                           # optional: caption | vqa | multiple_choice

``image`` is relative to ``image_root``. The ``<image>`` placeholder is removed from the text: the
backbone's chat template puts the image where its family expects it.
"""

from __future__ import annotations

import json
from pathlib import Path

from mllmft.data.record import Record, Turn
from mllmft.errors import DataError

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def read_llava_json(path: str | Path, image_root: str | Path, default_task: str = "vqa") -> list[Record]:
    return [llava_record(origin, row, Path(image_root), default_task) for origin, row in load_llava_rows(path)]


def load_llava_rows(path: str | Path) -> list[tuple[str, dict]]:
    """(origin, row) pairs of a LLaVA JSON list or JSONL file; origin names the file and position."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"conversation file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            rows = [(f"{path}:{n}", json.loads(line)) for n, line in enumerate(text.splitlines(), 1)
                    if line.strip()]
        else:
            rows = [(f"{path}[{n}]", row) for n, row in enumerate(json.loads(text))]
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON: {err}") from err
    return rows


def llava_record(origin: str, row: dict, image_root: Path, default_task: str) -> Record:
    rid = str(row.get("id", origin))
    if "image" not in row:
        raise DataError(f"record {rid!r} ({origin}): no 'image' field (text-only records are not supported)")
    turns = []
    for i, message in enumerate(row.get("conversations") or []):
        role = ROLES.get(message.get("from", ""))
        if role is None:
            raise DataError(f"record {rid!r} ({origin}): turn {i} has unknown speaker {message.get('from')!r}")
        turns.append(Turn(role, message.get("value", "").replace("<image>", "").strip()))
    last_answer = (turns[-1].text,) if turns and turns[-1].role == "assistant" else ()
    answers = tuple(str(a) for a in row.get("answers", ())) or last_answer
    record = Record(id=rid, image=image_root / row["image"], turns=tuple(turns),
                    task=row.get("task", default_task), answers=answers, origin=origin)
    record.validate()
    return record


class LlavaJsonSource:
    """A data set of LLaVA conversation files, one file per split (a split may be left out)."""

    def __init__(self, name: str, image_root: str, train: str | None = None, val: str | None = None,
                 test: str | None = None, task: str = "vqa", sizes: dict | None = None,
                 metric: str = "exact_match"):
        self.name = name
        self.metric = metric  # exact_match | vqa_accuracy | multiple_choice | caption
        self.image_root = image_root
        self.files = {"train": train, "val": val, "test": test}
        self.task = task
        self.sizes = sizes or {}  # at most this many records per split (quick runs on big sets)

    def records(self, split: str) -> list[Record]:
        file = self.files[split]
        if file is None:
            raise DataError(f"data set {self.name!r} has no {split!r} file; set it in its data config")
        records = read_llava_json(file, self.image_root, self.task)
        limit = self.sizes.get(split)
        return records[:limit] if limit else records
