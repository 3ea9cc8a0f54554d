"""Shared test set-up: offline, tiny random models, small data, quiet trainers."""

from __future__ import annotations

import tests.helpers  # noqa: F401  (first: the offline environment)

# isort: split

import pytest  # noqa: E402
import torch  # noqa: E402

from mllmft import api  # noqa: E402
from mllmft.backbones import build_tiny  # noqa: E402
from tests.helpers.runs import FAST, SMALL_LLAVA, TINY  # noqa: E402


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)  # 2-core machines: keep forked DDP workers from oversubscribing


@pytest.fixture
def tiny_backbone():
    return build_tiny("llava", TINY)


@pytest.fixture
def compose(tmp_path):
    """compose(*overrides) -> a fast run's config writing under tmp_path."""

    def _compose(*overrides: str, fast: bool = True, config_name: str = "train", run_dir: str = "run"):
        base = FAST if fast else []
        if fast and not any(o.startswith("model=") for o in overrides):
            base = [*base, *SMALL_LLAVA]
        return api.compose(
            [*base, f"paths.cache_dir={tmp_path / 'cache'}", f"paths.log_dir={tmp_path / 'logs'}", *overrides],
            config_name=config_name,
            output_dir=tmp_path / run_dir,
        )

    return _compose


# `make test` hands the tests to its workers in this order (pytest-xdist --dist worksteal: each worker
# takes half, an idle one takes from the end of the other's): the multi-process launches, the notebooks
# and the console commands first, so that no worker is left running a long one alone at the end
LONG_FIRST = ("tests/test_engines.py", "notebooks/", "tests/test_cli.py", "tests/test_benchmark.py")


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        return next((i for i, prefix in enumerate(LONG_FIRST) if item.nodeid.startswith(prefix)), len(LONG_FIRST))

    items.sort(key=rank)
