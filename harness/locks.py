"""Per-run and per-teacher file locks, so concurrent `dfad-bench run` processes never run the same thing.

They are OS locks (flock through `filelock`): the kernel drops them when their process dies, so a lock
left by a killed process is taken over at once; the holder's pid in the file only tells users who holds it.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout


class Busy(Exception):
    """Another live process holds the lock."""


@contextmanager
def exclusive(path: Path, wait: bool = False):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=-1 if wait else 0)
    try:
        lock.acquire()
    except Timeout:
        raise Busy(str(path)) from None
    try:
        try:
            Path(str(path) + ".owner").write_text(f"{os.getpid()}\n")
        except OSError:
            pass
        yield
    finally:
        lock.release()
