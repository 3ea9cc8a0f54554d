"""Reader for LLaVA-style conversation files (the format of LLaVA's and DataOptim's training sets).

A file is a JSON list or JSONL of objects::

    {"id": "0001", "image": "coco/000000123.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat is the man holding?"},
                       {"from": "gpt", "value": "A kite."}],
     "answers": ["kite", "kite", "a kite"],   # optional: references for scoring (else the last answer)
     "options": ["kite", "dog"],              # optional, multiple choice: the options' texts (A, B, ...)
     "task": "vqa"}                           # optional: caption | vqa | multiple_choice

or, as ms-swift and TRL write them, ``messages`` + ``images``::

    {"id": "0001", "images": ["coco/000000123.jpg"],
     "messages": [{"role": "user", "content": "<image>What is the man holding?"},
                  {"role": "assistant", "content": "A kite."}]}

(``content`` may also be TRL's list of parts, ``[{"type": "image"}, {"type": "text", "text": "..."}]``).
A system message is refused.

A record may have several images (``"image": ["a.jpg", "b.jpg"]``, or several ``images``); they go, in
order, before the text of the first user turn, and a family whose model reads one image (BLIP-2,
InstructBLIP) refuses the record at start-up. Each path is relative to ``image_root`` and must stay
inside it (``data.allow_outside_root=true`` lifts that). The ``<image>`` placeholders are removed from
the text (the backbone's chat template puts the images where its family expects them); when a record
has them, there is one per image, and several images' placeholders must open the first user turn
(images interleaved with the text are refused rather than moved), and a placeholder in a later turn is
refused rather than moved to the first. A record gives either ``conversations`` or ``messages``, and
either ``image`` or ``images``, never both. Every field's type is checked; a key this reader does
not know (a typo such as ``answer``) is reported once per file, with the number of records.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections import Counter
from pathlib import Path

from mllmft.data.record import Record, Turn
from mllmft.data.sizes import check_sizes, keep_first
from mllmft.errors import DataError

log = logging.getLogger(__name__)
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
KEYS = {"id", "image", "conversations", "messages", "images", "answers", "options", "task"}
PLACEHOLDER = "<image>"


# keys that say the same thing in the two formats: a record with both would silently lose one
EXCLUSIVE_KEYS = (("conversations", "messages"), ("image", "images"))


def read_llava_json(path: str | Path, image_root: str | Path, default_task: str = "vqa") -> list[Record]:
    """The records of a LLaVA-style JSON / JSONL file (or ms-swift / TRL ``messages`` + ``images``), checked."""
    rows = load_llava_rows(path)
    warn_unknown_keys(path, (row for _, row in rows), KEYS)
    return [_checked_record(origin, row, Path(image_root), default_task) for origin, row in rows]


def _checked_record(origin: str, row: dict, image_root: Path, default_task: str) -> Record:
    try:
        return llava_record(origin, row, image_root, default_task)
    except RecursionError as err:  # a value nested so deeply that printing it for a message recurses too far
        raise DataError(f"{origin}: a value nested too deeply to report; flatten the record") from err


def parse_json(text: str, where: str):
    """``text`` parsed; invalid JSON, or JSON nested deeper than Python's parser recurses, is a
    DataError naming ``where``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        position = f"line {err.lineno} column {err.colno}" if "\n" in text else f"column {err.colno}"
        raise DataError(f"{where}: not valid JSON: {err.msg} ({position})") from err
    except RecursionError as err:
        raise DataError(
            f"{where}: JSON nested too deeply to read (more than about {sys.getrecursionlimit()} levels)"
        ) from err


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason}); save it as UTF-8") from err


def load_llava_rows(path: str | Path) -> list[tuple[str, dict]]:
    """(origin, row) pairs of a LLaVA JSON list or JSONL file; origin names the file and line/position."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"conversation file not found: {path}")
    text = read_text(path)
    if path.suffix == ".jsonl":
        lines = enumerate(text.splitlines(), 1)
        rows = [(f"{path}:{n}", parse_json(line, f"{path}:{n}")) for n, line in lines if line.strip()]
    else:
        data = parse_json(text, str(path))
        if not isinstance(data, list):
            raise DataError(f"{path}: the top level must be a list of records, got a {type(data).__name__}")
        rows = [(f"{path}[{n}]", row) for n, row in enumerate(data)]
    for origin, row in rows:
        if not isinstance(row, dict):
            raise DataError(f"{origin}: a record must be a JSON object, got {type(row).__name__} {_short(row)}")
    return rows


def warn_unknown_keys(path, rows, known: set[str]) -> None:
    unknown = Counter(key for row in rows for key in row if key not in known)
    if unknown:
        log.warning(
            "%s: keys this reader does not use, ignored: %s (known keys: %s)",
            path,
            ", ".join(f"{k!r} in {n} record{'s' * (n > 1)}" for k, n in sorted(unknown.items())),
            ", ".join(sorted(known)),
        )


def llava_record(origin: str, row: dict, image_root: Path, default_task: str) -> Record:
    rid = row.get("id", origin)
    if not isinstance(rid, (str, int)) or isinstance(rid, bool):
        raise DataError(f"{origin}: 'id' must be a string or an integer, got {_short(rid)}")
    where = f"record {str(rid)!r} ({origin})"
    for first, second in EXCLUSIVE_KEYS:
        if first in row and second in row:
            raise DataError(f"{where}: has both {first!r} and {second!r}; give one (both would lose one silently)")
    images, turns = _messages_record(row, where) if "messages" in row else _conversations_record(row, where)
    turns = without_placeholders(turns, len(images), where)
    last_answer = (turns[-1].text,) if turns and turns[-1].role == "assistant" else ()
    answers = string_list(row.get("answers"), "answers", where) or last_answer
    options = string_list(row.get("options"), "options", where)
    task = row.get("task", default_task)
    record = Record(
        id=str(rid),
        images=tuple(image_root / image for image in images),
        turns=tuple(turns),
        task=task,
        answers=answers,
        origin=origin,
        options=options,
        image_root=image_root,
    )
    record.validate()
    return record


def without_placeholders(turns: list[Turn], n_images: int, where: str) -> list[Turn]:
    """The turns without their ``<image>`` placeholders, once these are checked against the images:
    none, or one per image, in the first user turn (where every family puts the images); several
    images' placeholders open it."""
    for i, turn in enumerate(turns[1:], 1):
        if PLACEHOLDER in turn.text:
            raise DataError(
                f"{where}: turn {i} ({turn.role}) has an {PLACEHOLDER} placeholder; the images go before "
                f"the text of the first user turn (turn 0), so their placeholders must be there"
            )
    count = sum(turn.text.count(PLACEHOLDER) for turn in turns)
    if count and count != n_images:
        raise DataError(
            f"{where}: {count} {PLACEHOLDER} placeholder{'s' * (count > 1)} for {n_images} "
            f"image{'s' * (n_images > 1)}; give one placeholder per image, or none"
        )
    if count > 1 and not re.match(rf"\s*(?:{PLACEHOLDER}\s*){{{count}}}", turns[0].text):
        raise DataError(
            f"{where}: the images go, in order, before the text of the first user turn, so their "
            f"{PLACEHOLDER} placeholders must open it; images interleaved with the text are not supported"
        )
    return [Turn(turn.role, turn.text.replace(PLACEHOLDER, "").strip()) for turn in turns]


def image_paths(value, field: str, where: str) -> list[str]:
    """One path or a list of them (at least one), each a non-empty string."""
    paths = [value] if isinstance(value, str) else value
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p.strip() for p in paths):
        raise DataError(f"{where}: '{field}' must be a file path or a list of them, got {_short(value)}")
    return paths


def _conversations_record(row: dict, where: str) -> tuple[list[str], list[Turn]]:
    """LLaVA's ``image`` (one path or a list) + ``conversations`` of ``{from, value}``."""
    if "image" not in row:
        raise DataError(f"{where}: no 'image' field (text-only records are not supported)")
    images = image_paths(row["image"], "image", where)
    conversations = row.get("conversations")
    if not isinstance(conversations, list):
        raise DataError(f"{where}: 'conversations' must be a list of turns, got {_short(conversations)}")
    turns = []
    for i, message in enumerate(conversations):
        if not isinstance(message, dict):
            raise DataError(f"{where}: turn {i} must be an object with 'from' and 'value', got {_short(message)}")
        speaker = message.get("from")
        role = ROLES.get(speaker) if isinstance(speaker, str) else None
        if role is None:
            raise DataError(
                f"{where}: turn {i} has unknown speaker {message.get('from')!r}; expected one of {sorted(ROLES)}"
            )
        value = message.get("value")
        if not isinstance(value, str):
            raise DataError(f"{where}: turn {i}'s 'value' must be a string, got {_short(value)}")
        turns.append(Turn(role, value))
    return images, turns


def _messages_record(row: dict, where: str) -> tuple[list[str], list[Turn]]:
    """ms-swift's / TRL's ``images`` + ``messages`` of ``{role, content}``."""
    if not row.get("images"):
        raise DataError(f"{where}: no images (text-only records are not supported)")
    images = image_paths(row["images"], "images", where)
    messages = row["messages"]
    if not isinstance(messages, list):
        raise DataError(f"{where}: 'messages' must be a list of turns, got {_short(messages)}")
    turns = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise DataError(f"{where}: message {i} must be an object with 'role' and 'content', got {_short(message)}")
        role = message.get("role")
        if role == "system":
            raise DataError(
                f"{where}: message {i} is a system message, which this reader does not support "
                "(put its instruction in the first user message)"
            )
        if role not in ("user", "assistant"):
            raise DataError(f"{where}: message {i} has role {role!r}; expected 'user' or 'assistant'")
        turns.append(Turn(role, _content_text(message.get("content"), f"{where}: message {i}")))
    return images, turns


def _content_text(content, where: str) -> str:
    """A message's text, with its ``<image>`` placeholders: a string, or TRL's list of parts (an image
    part is a placeholder)."""
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") not in ("text", "image"):
                raise DataError(
                    f"{where}: a content part must be {{'type': 'text' | 'image', ...}}, got {_short(part)}"
                )
            if part["type"] == "text":
                if not isinstance(part.get("text"), str):
                    raise DataError(f"{where}: a text part needs a string 'text', got {_short(part)}")
                parts.append(part["text"])
            else:
                parts.append(PLACEHOLDER)
        content = " ".join(parts)
    if not isinstance(content, str):
        raise DataError(f"{where}: 'content' must be a string or a list of parts, got {_short(content)}")
    return content


def string_list(value, field: str, where: str) -> tuple[str, ...]:
    """A list of strings (a lone string is one element, never its characters); None is empty."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{where}: '{field}' must be a list of strings, got {_short(value)}")
    return tuple(value)


def _short(value, limit: int = 60) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except RecursionError:
        return f"a {type(value).__name__} nested too deeply to print"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# the metric a set is scored with when its config names none, by its records' task
TASK_METRICS = {"vqa": "exact_match", "caption": "caption", "multiple_choice": "multiple_choice"}


class LlavaJsonSource:
    """A data set of LLaVA conversation files, one file per split (a split may be left out).

    Its metric is ``metric`` when set, else the one of its test records' task (``task`` in a record,
    or the set's ``task``): captions are scored as captions. A set whose test records mix tasks is
    refused unless ``metric`` says how to score them all (one score per set)."""

    def __init__(
        self,
        name: str,
        image_root: str,
        train: str | None = None,
        val: str | None = None,
        test: str | None = None,
        task: str = "vqa",
        sizes: dict | None = None,
        metric: str | None = None,
        metric_args: dict | None = None,
    ):
        self.name = name
        self._metric = metric  # exact_match | vqa_accuracy | multiple_choice | caption; None: by the task
        self._records: dict[str, list[Record]] = {}
        self.metric_args = dict(metric_args or {})  # e.g. {mode: official} for vqa_accuracy
        self.image_root = image_root
        self.files = {"train": train, "val": val, "test": test}
        self.task = task
        self.sizes = check_sizes(sizes, f"data set {name!r}: sizes")  # at most this many records per split

    def has_split(self, split: str) -> bool:
        return bool(self.files.get(split))

    @property
    def metric(self) -> str:
        if self._metric is not None:
            return self._metric
        tasks = sorted({r.task for r in self.records("test")}) if self.has_split("test") else [self.task]
        if len(tasks) > 1:
            raise DataError(
                f"data set {self.name!r}: its test records mix the tasks {tasks}, and a set gets one "
                "score: put each task in a set of its own (data.upstream.<name>), or set its metric"
            )
        return TASK_METRICS[tasks[0]]

    def records(self, split: str) -> list[Record]:
        if split not in self._records:  # read once: the metric reads the test split too
            file = self.files[split]
            if file is None:
                raise DataError(f"data set {self.name!r} has no {split!r} file; set it in its data config")
            records = read_llava_json(file, self.image_root, self.task)
            self._records[split] = keep_first(records, self.sizes, split)
        return self._records[split]
