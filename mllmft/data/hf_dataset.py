"""Hugging Face ``datasets`` as a source: a local directory (``save_to_disk`` output, or data files
that ``load_dataset`` reads) or a dataset name already in the HF cache, with a column mapping.

    target:
      _target_: mllmft.data.HFDataset
      name: my_vqa
      path: /data/my_vqa            # or an already-cached hub name
      splits: {train: train, val: validation, test: test}
      columns: {image: image, question: question, answer: answer, answers: answers}

``image`` may be an Image feature, decoded lazily per sample (a large set is never held in memory),
or a string column of file paths relative to ``image_root``, which must then be set; such a path must
stay inside it, as in every data file (``data.allow_outside_root`` lifts that). ``answers`` (a list
column, optional) holds the references; else the answer is the reference. A question or answer
cell must be text or a number: an empty one (null) is refused, never read as the text "None".
"""

from __future__ import annotations

import math
import reprlib
from functools import partial
from pathlib import Path

from PIL import Image

from mllmft.data.file_source import VQA_PROMPT
from mllmft.data.record import Record, single_turn
from mllmft.data.sizes import check_sizes, keep_first
from mllmft.errors import DataError

COLUMNS = {"image": "image", "question": "question", "answer": "answer", "answers": None, "id": None}


def _text(value, column: str, where: str) -> str:
    """A text cell: a string, or a number (a count); null, NaN or any other type is refused."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return str(value)
    raise DataError(f"{where}: column {column!r} holds {reprlib.repr(value)}; expected text")


def _references(value, column: str, where: str) -> tuple[str, ...]:
    """An answers cell: a list (of strings or numbers), or one string (never split into characters);
    an empty cell is no references (which the record's check refuses)."""
    if value is None or isinstance(value, str):
        return () if value is None else (value,)
    if not isinstance(value, (list, tuple)):
        raise DataError(f"{where}: column {column!r} holds {reprlib.repr(value)}; expected a list of answers")
    return tuple(_text(a, column, where) for a in value)


def _open(ds, column: str, index: int) -> Image.Image:
    value = ds[index][column]
    if not isinstance(value, Image.Image):  # Record turns this into a DataError naming the record
        raise ValueError(f"column {column!r} holds {reprlib.repr(value)}, not an image")
    return value


class HFDataset:
    """A Hugging Face ``datasets`` set as a Source: ``splits`` map our split names to its own, ``columns``
    our fields (image, question, answer(s), ...) to its column names."""

    def __init__(
        self,
        name: str,
        path: str,
        splits: dict[str, str] | None = None,
        columns: dict | None = None,
        config_name: str | None = None,
        image_root: str | None = None,
        prompt: str = VQA_PROMPT,
        task: str = "vqa",
        metric: str = "exact_match",
        sizes: dict | None = None,
        metric_args: dict | None = None,
    ):
        self.name = name
        self.path = path
        self.splits = dict(splits or {"train": "train", "val": "validation", "test": "test"})
        self.columns = {**COLUMNS, **(columns or {})}
        self.config_name = config_name
        self.image_root = Path(image_root) if image_root else None
        self.prompt, self.task, self.metric = prompt, task, metric
        self.metric_args = dict(metric_args or {})
        self.sizes = check_sizes(sizes, f"data set {name!r}: sizes")

    def has_split(self, split: str) -> bool:
        return bool(self.splits.get(split))

    def _load(self, split: str):
        try:
            import datasets
        except ImportError as err:
            raise DataError("HFDataset needs the `datasets` package: pip install 'mllmft[data]'") from err
        if not self.splits.get(split):
            raise DataError(f"data set {self.name!r} maps no HF split to {split!r}; set `splits`")
        local = Path(self.path)
        try:
            if (local / "dataset_dict.json").is_file() or (local / "state.json").is_file():
                ds = datasets.load_from_disk(str(local))
                ds = ds[self.splits[split]] if isinstance(ds, datasets.DatasetDict) else ds
            else:
                ds = datasets.load_dataset(self.path, self.config_name, split=self.splits[split])
        except (FileNotFoundError, ValueError, KeyError, ConnectionError) as err:
            raise DataError(
                f"data set {self.name!r}: cannot load {self.path!r} split {self.splits[split]!r}: {err}"
            ) from err
        missing = [c for c in self.columns.values() if c and c not in ds.column_names]
        if missing:
            raise DataError(f"data set {self.name!r}: columns {missing} not in {ds.column_names}; set `columns`")
        return ds

    def records(self, split: str) -> list[Record]:
        ds = self._load(split)
        c = self.columns
        paths = self._holds_paths(ds)
        read = [c["question"], c["answer"], c["answers"], c["id"], c["image"] if paths else None]
        rows = ds.select_columns(list(dict.fromkeys(x for x in read if x)))
        out = []
        indices = keep_first(range(len(ds)), self.sizes, split)
        for i, row in zip(indices, rows.select(indices)):
            origin = f"{self.path}[{self.splits[split]}][{i}]"
            rid = f"{self.name}-{_text(row[c['id']], c['id'], origin) if c['id'] else i}"
            where = f"record {rid!r} ({origin})"
            answer = _text(row[c["answer"]], c["answer"], where)
            out.append(
                single_turn(
                    rid,
                    self._image_path(row[c["image"]], where) if paths else partial(_open, ds, c["image"], i),
                    self.prompt.format(question=_text(row[c["question"]], c["question"], where)),
                    answer,
                    self.task,
                    answers=_references(row[c["answers"]], c["answers"], where) if c["answers"] else (answer,),
                    origin=origin,
                    image_root=self.image_root if paths else None,
                )
            )
        return out

    def _holds_paths(self, ds) -> bool:
        """Whether the image column holds file paths (strings) rather than pictures."""
        import datasets

        feature = ds.features[self.columns["image"]]
        paths = isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")
        if paths and self.image_root is None:
            raise DataError(
                f"data set {self.name!r}: its image column {self.columns['image']!r} holds file paths; set "
                "image_root to the folder they are relative to (their paths must stay inside it)"
            )
        return paths

    def _image_path(self, value, where: str) -> Path:
        if not isinstance(value, str) or not value.strip():
            column = self.columns["image"]
            raise DataError(f"{where}: column {column!r} holds {reprlib.repr(value)}; expected a file path")
        assert self.image_root is not None  # _holds_paths requires it
        return self.image_root / value
