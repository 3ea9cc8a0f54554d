"""What every on-disk data set reader shares: per-split files, an image root, a prompt, a metric."""

from __future__ import annotations

import string
from dataclasses import replace
from pathlib import Path

from mllmft.data.llava_json import parse_json, read_text
from mllmft.data.record import Record
from mllmft.data.sizes import check_sizes, keep_first
from mllmft.errors import ConfigError, DataError

VQA_PROMPT = "{question}\nAnswer the question using a single word or phrase."  # LLaVA-1.5's short-answer prompt


class FileSource:
    """Subclasses implement ``read(path, split) -> list[Record]``.

    ``files`` maps a split to its file (relative to ``root``); a missing split is an error only when
    a run needs it. ``prompt`` is a template the reader fills; the same text is used for training and
    for evaluation. ``sizes`` caps the records of a split (quick runs on large sets).
    ``max_new_tokens`` sets this set's generation length (captions want more than short answers).
    ``metric_args`` go to the metric: ``{mode: official}`` for vqa_accuracy's convention,
    ``{n_options: 4}`` for multiple_choice.
    """

    metric = "exact_match"
    max_new_tokens: int | None = None  # generation length at test time; None: module.max_new_tokens
    prompt_fields: tuple[str, ...] | None = ("question",)  # the {fields} ``prompt`` may name; None: used as is

    def __init__(
        self,
        name: str,
        root: str,
        files: dict[str, str],
        image_root: str | None = None,
        *,
        prompt: str = VQA_PROMPT,
        metric: str | None = None,
        sizes: dict | None = None,
        max_new_tokens: int | None = None,
        metric_args: dict | None = None,
    ):
        self.name = name
        self.root = Path(root)
        self.files = dict(files)
        self.image_root = Path(image_root) if image_root else self.root
        self.prompt = check_prompt(name, prompt, self.prompt_fields)
        self.metric = metric or self.metric
        self.metric_args = dict(metric_args or {})
        self.sizes = check_sizes(sizes, f"data set {name!r}: sizes")
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
        path = self.path(split)
        try:
            records = self.read(path, split)
        except (KeyError, TypeError, IndexError, AttributeError, ValueError) as err:
            if isinstance(err, DataError):
                raise
            raise DataError(
                f"data set {self.name!r}: {path} is not in {type(self).__name__}'s layout "
                f"({type(err).__name__}: {err}); see the reader's docstring"
            ) from err
        records = keep_first(records, self.sizes, split)
        # paths built from the files' contents (ids, file names) must stay under the image root
        return [r if r.image_root is not None else replace(r, image_root=self.image_root) for r in records]

    def read(self, path: Path, split: str) -> list[Record]:
        raise NotImplementedError

    def load_json(self, path: Path):
        if not path.is_file():
            raise DataError(f"data set {self.name!r}: file not found: {path}")
        return parse_json(read_text(path), f"data set {self.name!r}: {path}")


def check_prompt(name: str, prompt, fields: tuple[str, ...] | None) -> str:
    """A data set's ``prompt`` template names only the fields its reader fills (``{question}``...), with
    braces that pair (``{{`` for a literal one): one line now, not a KeyError at the first record."""
    if not isinstance(prompt, str):
        raise ConfigError(f"data set {name!r}: prompt={prompt!r}; expected text")
    if fields is None:
        return prompt
    try:
        named = {field for _, field, _, _ in string.Formatter().parse(prompt) if field is not None}
    except ValueError as err:
        raise ConfigError(
            f"data set {name!r}: prompt={prompt!r} is not a template ({err}; write {{{{ for a brace)"
        ) from err
    unknown = sorted(f for f in named if f not in fields)
    if unknown:
        raise ConfigError(
            f"data set {name!r}: prompt={prompt!r} names {unknown}; this reader fills {['{' + f + '}' for f in fields]}"
        )
    return prompt
