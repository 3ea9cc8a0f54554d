"""What the module needs to know about each test set: its name, its metric and its answer length."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TestSet:
    """One set tested by generation; the datamodule lists them (target first) and the module scores
    each with ``build_metric(**metric)``.

    ``metric`` is ``{"name": metric, **metric_args}`` (e.g. ``{"name": "vqa_accuracy", "mode":
    "official"}``); ``max_new_tokens`` None: the module's ``max_new_tokens``.
    """

    __test__ = False  # a data class, not a pytest test class

    name: str
    metric: Mapping = field(default_factory=lambda: {"name": "exact_match"})
    max_new_tokens: int | None = None
