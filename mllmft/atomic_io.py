"""Writes that are whole or absent: a full disk, a quota or a crash mid-write keeps the previous file
(or directory) as it was.

The new content goes to a temporary beside its target, ``<dir>/.<name>.tmp``: in the same directory,
so the final rename never crosses filesystems (where a "move" is a copy over the old file, which a
full disk cuts short). It is flushed to the disk, then renamed over the target in one step. A failed
write removes the temporary and raises a ``StorageError``: one line naming the file, why, and what
was kept.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from mllmft.errors import StorageError


class RecordingWriter:
    """A binary file that keeps the first error of a write: ``torch.save`` reports a failed write only
    as a RuntimeError about stream positions, and the disk's own reason would be lost."""

    def __init__(self, file: BinaryIO):
        self.file = file
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        self.file.flush()


def write_atomically(path: str | Path, write: Callable[[RecordingWriter], object], what: str) -> None:
    """``write(file)`` fills ``path`` (``what`` names it in a failure: "the checkpoint", ...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_of(path)
    refused: OSError | None = None
    try:
        with open(tmp, "wb") as file:
            writer = RecordingWriter(file)
            try:
                write(writer)
            finally:
                refused = writer.error
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        _raise_refused(what, path, refused or err)
        raise
    _fsync_directory(path.parent)


@contextmanager
def directory_written_atomically(path: str | Path, what: str) -> Iterator[Path]:
    """Yields a temporary directory to fill; at the end it replaces ``path`` whole (an older ``path``
    is moved aside, then removed). On any failure the temporary is removed and ``path`` kept."""
    path = Path(path)
    tmp = temporary_of(path)
    shutil.rmtree(tmp, ignore_errors=True)  # left by a run that died while writing
    try:
        tmp.mkdir(parents=True)
        yield tmp
        for file in sorted(p for p in tmp.rglob("*") if p.is_file()):
            _fsync_file(file)
        replace_directory(tmp, path)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        _raise_refused(what, path, err)
        raise
    _fsync_directory(path.parent)


def temporary_of(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def replace_directory(tmp: Path, path: Path) -> None:
    """``tmp``, complete, becomes ``path``. A directory cannot be renamed over a non-empty one: the old
    one goes aside first (a crash between the two renames leaves it whole, as ``.<name>.old``)."""
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def _raise_refused(what: str, path: Path, err: BaseException) -> None:
    """Raise the one-line error for a write the machine refused; return for anything else (a bug
    keeps its traceback). safetensors (Rust) reports a failed write as a SafetensorError naming an
    IoError."""
    if isinstance(err, StorageError) or not (
        isinstance(err, OSError) or (type(err).__name__ == "SafetensorError" and "IoError" in str(err))
    ):
        return
    reason = (err.strerror if isinstance(err, OSError) else None) or str(err).strip().splitlines()[0]
    kept = f"the previous {path.name} is kept unchanged" if path.exists() else f"no {path.name} was written"
    raise StorageError(f"could not write {what} {path} ({reason}); {kept}") from err


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(path: Path) -> None:
    """The rename itself on the disk (a directory's entries are flushed with the directory)."""
    try:
        _fsync_file(path)
    except OSError:  # a filesystem that cannot sync directories: the rename is still atomic
        pass
