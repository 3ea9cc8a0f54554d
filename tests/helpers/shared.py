"""What the pytest-xdist workers of one session share: a directory, and work done once in it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock


def session_dir(tmp_path_factory) -> Path:
    """A directory of this test session that every worker sees (each has its own basetemp below it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def once(out: Path, make: Callable[[Path], None]) -> Path:
    """``make(out)`` the first time any worker asks for ``out`` in this session; the others wait on the
    lock (idle) and find it made. Also serialises what must not run twice at once (a wheel built in the
    source tree)."""
    out.mkdir(parents=True, exist_ok=True)
    with FileLock(out / ".lock"):
        if not (out / ".done").is_file():
            make(out)
            (out / ".done").touch()
    return out
