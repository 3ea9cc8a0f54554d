"""``sizes``: how many records of each split a data set keeps (quick runs on large sets)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from mllmft.checks import check_number
from mllmft.errors import ConfigError

SPLITS = ("train", "val", "test")
Items = TypeVar("Items", list, range)


def check_sizes(sizes, key: str = "sizes") -> dict:
    """``sizes`` as a dict, each split's cap a positive integer or null (the whole split). Zero or a
    negative number would otherwise slip through ``items[:n]`` as all records, or all but the last."""
    if sizes is None:
        return {}
    if not isinstance(sizes, Mapping):
        raise ConfigError(f"{key}={sizes!r}; expected a mapping of split to a number of records, e.g. {{train: 1000}}")
    for split, limit in sizes.items():
        if split not in SPLITS:
            raise ConfigError(f"{key}.{split}: no such split; expected one of {SPLITS}")
        if limit is not None:
            check_number(f"{key}.{split}", limit, 1, integer=True)
    return dict(sizes)


def keep_first(items: Items, sizes: dict, split: str) -> Items:
    """The first ``sizes[split]`` items (all when the split has no cap)."""
    limit = sizes.get(split)
    return items if limit is None else items[:limit]
