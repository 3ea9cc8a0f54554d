"""One run per run directory: two runs started into the same ``hydra.run.dir`` would mix their outputs
(results.json of one, last.ckpt of the other) without a word.

The launching process of a run holds ``<run dir>/.mllmft-run.lock`` (its pid and host) from start-up
to its end; a second run into the directory is refused at start-up, before anything runs. The other
ranks of a multi-process run work in the same directory and take no lock: only the process with no
rank or rank 0 of node 0 does (torchrun, DeepSpeed and Lightning's own launcher set RANK or
LOCAL_RANK in the others). A lock left by a process of this host that no longer runs (killed) is
taken over; one from another host cannot be checked, and the message says how to remove it.
Resuming into the directory (``ckpt_path=``) starts after the first run ended: it takes the lock anew.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mllmft.errors import ConfigError

LOCK_NAME = ".mllmft-run.lock"
# Lightning's order (lightning.fabric.utilities.rank_zero._get_rank), read here from the environment
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


@contextmanager
def run_directory_lock(directory: str | Path) -> Iterator[None]:
    """Hold the run directory's lock while the block runs (launching process only)."""
    if not launching_process():
        yield
        return
    lock = Path(directory) / LOCK_NAME
    mine = _take(lock)
    try:
        yield
    finally:
        if _holder(lock) == mine:  # never another run's, should ours have been removed by hand
            lock.unlink(missing_ok=True)


def launching_process() -> bool:
    rank = next((os.environ[v] for v in RANK_VARIABLES if v in os.environ), "0")
    return rank.strip() == "0" and os.environ.get("NODE_RANK", "0").strip() == "0"


def _take(lock: Path) -> dict:
    lock.parent.mkdir(parents=True, exist_ok=True)
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):  # the second try after removing a stale lock
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(lock)
            if holder is None or _alive(holder):
                raise ConfigError(_in_use(lock, holder)) from None
            if _holder(lock) == holder:  # still the stale one, not a run that took it over meanwhile
                lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as file:
            json.dump(mine, file)
        return mine
    raise ConfigError(_in_use(lock, _holder(lock)))


def _holder(lock: Path) -> dict | None:
    """The lock's content; None if unreadable (being written, or damaged: treated as held)."""
    try:
        holder = json.loads(lock.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None


def _alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # another machine's process: no way to tell from here
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _in_use(lock: Path, holder: dict | None) -> str:
    who = (
        f"pid {holder['pid']} on {holder.get('host')}, since {holder.get('started')}"
        if holder
        else "its lock is unreadable"
    )
    return (
        f"the run directory {lock.parent} is in use by another run ({who}): two runs in one directory "
        f"mix their outputs. Give this run its own hydra.run.dir, or wait for that run to end; if no "
        f"run uses it, delete {lock}"
    )
