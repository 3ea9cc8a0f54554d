"""What every on-disk data set reader shares: per-split files, an image root, a prompt, a metric."""

from __future__ import annotations

import json
from pathlib import Path

from mllmft.data.record import Record
from mllmft.errors import DataError

VQA_PROMPT = "{question}\nAnswer the question using a single word or phrase."  # LLaVA-1.5's short-answer prompt


class FileSource:
    """Subclasses implement ``read(path, split) -> list[Record]``.

    ``files`` maps a split to its file (relative to ``root``); a missing split is an error only when
    a run needs it. ``prompt`` is a template the reader fills; the same text is used for training and
    for evaluation. ``sizes`` caps the records of a split (quick runs on large sets).
    ``max_new_tokens`` sets this set's generation length (captions want more than short answers).
    """

    metric = "exact_match"
    max_new_tokens: int | None = None  # generation length at test time; None: module.max_new_tokens

    def __init__(self, name: str, root: str, files: dict[str, str], image_root: str | None = None,
                 prompt: str = VQA_PROMPT, metric: str | None = None, sizes: dict | None = None,
                 max_new_tokens: int | None = None):
        self.name = name
        self.root = Path(root)
        self.files = dict(files)
        self.image_root = Path(image_root) if image_root else self.root
        self.prompt = prompt
        self.metric = metric or self.metric
        self.sizes = sizes or {}
        self.max_new_tokens = max_new_tokens or self.max_new_tokens

    def has_split(self, split: str) -> bool:
        return bool(self.files.get(split))

    def path(self, split: str) -> Path:
        if not self.files.get(split):
            raise DataError(f"data set {self.name!r} has no {split!r} file; set it under its `files` in the config")
        path = self.root / self.files[split]
        if not path.exists():
            raise DataError(f"data set {self.name!r}: {split} file not found: {path}")
        return path

    def records(self, split: str) -> list[Record]:
        records = self.read(self.path(split), split)
        limit = self.sizes.get(split)
        return records[:limit] if limit else records

    def read(self, path: Path, split: str) -> list[Record]:
        raise NotImplementedError

    def load_json(self, path: Path):
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(f"data set {self.name!r}: {path} is not valid JSON: {err}") from err
