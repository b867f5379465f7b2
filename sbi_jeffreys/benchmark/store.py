"""The sweep's results store: ``results.csv``, replaced whole, atomically, under a lock.

Results store (:class:`ResultStore`): ``results.csv`` is only ever replaced whole. To add a
unit's rows the driver takes an exclusive ``fcntl.flock`` on ``results.csv.lock``, reads the
current file, drops any new row whose key ``(task, num_simulations, seed, observation,
method)`` is already present, writes the old rows plus the new ones to a temporary file in
the same directory, ``fsync``\\ s it, ``os.replace``\\ s it over ``results.csv`` and
``fsync``\\ s the directory. ``os.replace`` is atomic on POSIX, so a reader or a restarted
sweep sees either the old file or the new one, never a partial row, and a unit's rows land
all together or not at all: a sweep killed at any moment (SIGKILL included) loses at most
the units in flight and never duplicates a row. On restart, cells already in
``results.csv`` are skipped (a unit runs only if one of its cells is missing, and then
writes only the missing ones). The settings that are not part of the key (``num_samples``,
C2ST variant, training and method kwargs) are saved in ``sweep_config.json``; resuming into
the same folder with different settings is refused, so rows of different settings never mix.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

KEY_COLUMNS: tuple[str, ...] = ("task", "num_simulations", "seed", "observation", "method")
RESULT_COLUMNS: tuple[str, ...] = KEY_COLUMNS + (
    "c2st",
    "c2st_kind",
    "num_samples",
    "num_simulations_used",
    "train_seconds",
    "sample_seconds",
    "c2st_seconds",
    "simulate_seconds",
    "device",
    "host",
    "finished_at",
)
_INT_KEYS = ("num_simulations", "seed", "observation")
MAX_REFERENCE_SAMPLES = 10_000  # sbibm ships 10,000 reference posterior samples per observation

Key = tuple[str, int, int, int, str]
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _key(row: Mapping[str, Any]) -> Key:
    return (
        str(row["task"]),
        int(row["num_simulations"]),
        int(row["seed"]),
        int(row["observation"]),
        str(row["method"]),
    )


# --------------------------------------------------------------------------- results store


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, see :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a fsynced temporary file and ``os.replace``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class ResultStore:
    """``results.csv`` with whole-file atomic replacement under a file lock (module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def read(self) -> list[dict[str, str]]:
        """All rows, as dicts of strings (empty list if the file does not exist yet)."""
        if not self.path.exists():
            return []
        with open(self.path, newline="") as fh:
            return list(csv.DictReader(fh))

    def finished(self) -> set[Key]:
        """Keys ``(task, num_simulations, seed, observation, method)`` already stored."""
        return {_key(row) for row in self.read()}

    def append(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Atomically add ``rows`` whose key is not stored yet; return how many were added."""
        rows = list(rows)
        if not rows:
            return 0
        with self._locked():
            old = self.read()
            seen = {_key(r) for r in old}
            new = []
            for row in rows:
                k = _key(row)
                if k not in seen:
                    seen.add(k)
                    new.append(row)
            if not new:
                return 0
            columns = list(RESULT_COLUMNS)
            for row in old[:1] + new:
                columns += [c for c in row if c not in columns]
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(old)
            writer.writerows(new)
            atomic_write_text(self.path, buffer.getvalue())
            return len(new)
