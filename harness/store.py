"""The run store: `<runs-dir>/<suite>/<method>/seed-<n>/` with config.yaml, metrics.csv, summary.json
and checkpoints. Every write is atomic (temp file + rename), so a killed process never leaves half a file.
"""
from __future__ import annotations

import csv
import errno
import functools
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import yaml

from .errors import HarnessError

METRIC_FIELDS = ("iteration", "test_acc", "elapsed_s")
# the storage itself failed (full disk, quota, read-only, file size limit): every later write would fail too
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


def atomic_write(path: Path, data: bytes | str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):  # mkstemp's 0600 would hide shared runs dirs from the group
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:  # say which file could not be written
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it (setting it is process-wide)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_torch_save(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getvalue())


def write_json(path: Path, obj: dict) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def is_number(v) -> bool:
    """A number as a stored JSON value may hold it (not true/false, not a string)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def read_json(path: Path) -> dict | None:
    """A JSON object from the file; None if it is missing, unreadable, or not an object."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError):  # ValueError: not JSON, or not UTF-8
        return None
    return obj if isinstance(obj, dict) else None


def metrics_csv(rows: list[dict]) -> str:
    keys = list(METRIC_FIELDS) + sorted({k for r in rows for k in r} - set(METRIC_FIELDS))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


@dataclass
class RunDir:
    path: Path
    method: str
    seed: int

    config = property(lambda self: self.path / "config.yaml")
    metrics = property(lambda self: self.path / "metrics.csv")
    summary_path = property(lambda self: self.path / "summary.json")
    checkpoint = property(lambda self: self.path / "checkpoint.pt")
    student = property(lambda self: self.path / "student.pt")

    def summary(self) -> dict | None:
        return read_json(self.summary_path)

    def is_done(self) -> bool:
        s = self.summary()
        return bool(s) and s.get("status") == "done"

    def incomplete(self) -> str | None:
        """What a finished run lacks (a number in summary.json, student.pt, metrics.csv with its evaluations),
        or None."""
        s = self.summary() or {}
        if not all(is_number(s.get(k)) for k in ("best_acc", "final_acc")):
            return "its summary.json has no best_acc/final_acc"
        if not self.student.is_file():
            return "its student.pt is missing"
        try:
            with open(self.metrics) as f:
                if sum(1 for line in f if line.strip()) < 2:
                    return "its metrics.csv has no evaluations"
        except OSError:
            return "its metrics.csv is missing"
        return None

    def write_config(self, cfg: dict) -> None:
        atomic_write(self.config, yaml.safe_dump(cfg, sort_keys=False))

    def write_metrics(self, rows: list[dict]) -> None:
        atomic_write(self.metrics, metrics_csv(rows))

    def write_summary(self, summary: dict) -> None:
        write_json(self.summary_path, summary)


class Store:
    def __init__(self, runs_dir: str | Path, suite: str):
        self.root = Path(runs_dir)
        self.suite = suite
        self.dir = self.root / suite

    def ensure_writable(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / f".write-probe-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise HarnessError(f"runs dir {self.root} is not writable ({e.strerror or e})") from None

    def run(self, method: str, seed: int) -> RunDir:
        return RunDir(self.dir / method / f"seed-{seed}", method, seed)

    def runs(self) -> Iterator[RunDir]:
        if not self.dir.is_dir():
            return
        for mdir in sorted(p for p in self.dir.iterdir() if p.is_dir() and p.name not in ("report", "teacher")):
            for sdir in sorted(mdir.glob("seed-*")):
                try:
                    seed = int(sdir.name.split("-", 1)[1])
                except ValueError:
                    continue
                yield RunDir(sdir, mdir.name, seed)

    def has_runs(self) -> bool:
        """Whether there is anything to report: a teacher or a run (an empty folder, left by a run that stopped
        before its first, has none)."""
        return self.teacher_summary_path.is_file() or next(self.runs(), None) is not None

    @property
    def teacher_summary_path(self) -> Path:
        return self.dir / "teacher" / "summary.json"

    @property
    def report_dir(self) -> Path:
        return self.dir / "report"
