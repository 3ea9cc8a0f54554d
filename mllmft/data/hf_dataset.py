"""Hugging Face ``datasets`` as a source: a local directory (``save_to_disk`` output, or data files
that ``load_dataset`` reads) or a dataset name already in the HF cache, with a column mapping.

    target:
      _target_: mllmft.data.HFDataset
      name: my_vqa
      path: /data/my_vqa            # or an already-cached hub name
      splits: {train: train, val: validation, test: test}
      columns: {image: image, question: question, answer: answer, answers: answers}

``image`` may be an Image feature or a path (relative to ``image_root``). ``answers`` (a list column,
optional) holds the references; else the answer is the reference. Images are decoded lazily, per
sample, so a large set is never held in memory.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from PIL import Image

from mllmft.data.file_source import VQA_PROMPT
from mllmft.data.record import Record, single_turn
from mllmft.errors import DataError

COLUMNS = {"image": "image", "question": "question", "answer": "answer", "answers": None, "id": None}


def _references(value) -> tuple[str, ...]:
    """An answers cell: a list (of strings or numbers), or one string (never split into characters)."""
    if isinstance(value, str):
        return (value,)
    return tuple(str(a) for a in value or ())


def _open(ds, column: str, image_root: Path | None, index: int) -> Image.Image:
    value = ds[index][column]
    if isinstance(value, Image.Image):
        return value
    return Image.open(image_root / value if image_root else value)


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
        self.sizes = sizes or {}

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
        limit = self.sizes.get(split) or len(ds)
        text = ds.select_columns([x for x in (c["question"], c["answer"], c["answers"], c["id"]) if x])
        out = []
        for i, row in enumerate(text.select(range(min(limit, len(ds))))):
            answers = _references(row[c["answers"]]) if c["answers"] else (str(row[c["answer"]]),)
            rid = f"{self.name}-{row[c['id']] if c['id'] else i}"
            out.append(
                single_turn(
                    rid,
                    partial(_open, ds, c["image"], self.image_root, i),
                    self.prompt.format(question=row[c["question"]]),
                    str(row[c["answer"]]),
                    self.task,
                    answers=answers,
                    origin=f"{self.path}[{self.splits[split]}][{i}]",
                )
            )
        return out
