"""Weights & Biases mirror of every run: config, metrics at each evaluation, sample grids, summary.

The local run store stays the source of truth; W&B gets a copy. Offline by default (files under
`<runs-dir>/wandb`, uploaded later with `wandb sync`), online on request, falling back to offline with
one warning when the server cannot be reached, so nothing is lost either way.
"""
from __future__ import annotations

import json
import os
import re
import struct
import sys
import time
from pathlib import Path

import torch

from .config import Suite, WandbCfg
from .errors import HarnessError
from .runner import RunCallback

_warned: set[str] = set()
_warned_online: list = []
SECRET = re.compile(r"key|token|secret|password|passwd", re.I)
SUMMARY_KEYS = ("best_acc", "final_acc", "teacher_acc", "wall_time_s", "train_time_s", "best_iteration",
                "iterations", "status", "reason", "student_macs", "s_per_iter", "best_val_acc")


def warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        print(f"warning: {msg}", file=sys.stderr)


def resolve_mode(cfg: WandbCfg) -> str:
    """The suite's explicit mode wins; else WANDB_MODE (dryrun = offline, run = online); else offline."""
    if cfg.mode:
        return cfg.mode
    if os.environ.get("WANDB_DISABLED", "").lower() in ("1", "true", "yes"):
        return "disabled"
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if not env:
        return "offline"
    if env not in ("online", "offline", "disabled", "dryrun", "run", "shared"):  # a typo is not silently offline
        raise HarnessError(f"WANDB_MODE={os.environ['WANDB_MODE']!r}: choose online, offline or disabled")
    return {"dryrun": "offline", "run": "online", "shared": "online"}.get(env, env)


def redact(obj):
    """Drop secrets (API keys, passwords in URLs) from anything sent to W&B."""
    if isinstance(obj, dict):
        return {k: "<redacted>" if SECRET.search(str(k)) else redact(v) for k, v in obj.items()}
    if isinstance(obj, str):
        return re.sub(r"(://[^:/@\s]+):[^@\s]+@", r"\1:***@", obj)
    return obj


def settings(mode: str):
    import wandb

    # Start-up cost matters (one W&B run per harness run, and per trial): no system stats, no console
    # capture, no git/code/machine scan.
    return wandb.Settings(console="off", x_disable_stats=True, x_disable_meta=True, x_disable_machine_info=True,
                          disable_git=True, save_code=False, silent=True,
                          init_timeout=30.0 if mode == "online" else 90.0)


def start_run(mode: str, **kw):
    """wandb.init; an online start that fails (no network, no key) becomes an offline run."""
    import wandb

    if mode == "online" and _warned_online:  # one failed start per process: later runs skip the wait
        mode = "offline"
    try:
        return wandb.init(mode=mode, settings=settings(mode), reinit="create_new", **kw), mode
    except Exception as e:
        if mode != "online":
            raise HarnessError(f"W&B could not start an {mode} run ({str(e).splitlines()[0][:160]})") from None
        _warned_online.append(True)
        warn_once(f"W&B online unavailable ({redact(str(e).splitlines()[0])[:160]}); logging offline "
                  f"instead, upload later with `wandb sync`")
        return wandb.init(mode="offline", settings=settings("offline"), reinit="create_new", **kw), "offline"


class WandbTracker(RunCallback):
    """One W&B run per harness run; group/job_type/name default to suite/method/`<method>-seed<n>`."""

    def __init__(self, suite: Suite, runs_dir: str | Path, group: str | None = None, job_type: str | None = None,
                 name: str | None = None, extra_config: dict | None = None):
        self.suite, self.cfg, self.dir = suite, suite.tracking.wandb, Path(runs_dir)
        self.group, self.job_type, self.name, self.extra = group, job_type, name, extra_config or {}
        self.run, self.evals = None, 0

    def on_run_start(self, rd, config: dict, summary: dict) -> dict:
        mode = resolve_mode(self.cfg)
        if mode == "disabled":
            return {"wandb_mode": "disabled"}
        from .data import get_dataset

        spec = get_dataset(config["dataset"])
        self.stats = (torch.tensor(spec.mean).view(-1, 1, 1), torch.tensor(spec.std).view(-1, 1, 1))
        cfg = redact({**config, "suite": self.suite.name, "profile": self.suite.profile, **self.extra,
                      "config_hash": summary.get("config_hash"),
                      # budget.time_budget_s: the iterations this run plans (budget.iterations is then the cap)
                      **({"time_budget": summary["time_budget"]} if summary.get("time_budget") else {}),
                      **({"resumed_from": summary["wandb_resumed_from"]} if summary.get("wandb_resumed_from") else {})})
        self.dir.mkdir(parents=True, exist_ok=True)
        project = self.cfg.project or "dfad-bench"
        self.run, mode = start_run(mode, project=project, entity=self.cfg.entity, dir=str(self.dir),
                                   group=self.group or self.suite.name, job_type=self.job_type or config["method"],
                                   name=self.name or f"{config['method']}-seed{config['seed']}", config=cfg)
        self.evals = 0
        return {"wandb_id": self.run.id, "wandb_mode": mode, "wandb_project": project,
                "wandb_dir": str(Path(self.run.dir).parent)}

    def on_eval(self, row: dict, method=None) -> None:
        if self.run is None:
            return
        data = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.evals += 1
        if method is not None and (self.evals == 1 or self.evals % self.cfg.sample_every == 0):
            grid = self.sample_grid(method)
            if grid is not None:
                import wandb

                data["samples"] = wandb.Image(grid, caption=f"iteration {row.get('iteration')}")
        self.run.log(data, step=int(row["iteration"]))

    def sample_grid(self, method):
        """Denormalised generated images as an HxWxC uint8 grid, or None for methods without a generator.
        The RNG is forked so that tracking never changes what a run computes."""
        from .data import image_grid

        dev = method.ctx.device
        try:
            with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
                x = method.sample(self.cfg.samples)
        except Exception as e:
            warn_once(f"no sample grid ({type(e).__name__}: {str(e)[:100]})")
            return None
        if x is None:
            return None
        mean, std = self.stats
        x = (x.detach().float().cpu() * std + mean).clamp(0, 1)
        grid = (image_grid(x, nrow=8, padding=2).permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        return grid[..., 0] if grid.shape[-1] == 1 else grid

    def on_run_end(self, summary: dict) -> None:
        if self.run is None:
            return
        self.run.summary.update({k: summary[k] for k in SUMMARY_KEYS if summary.get(k) is not None})
        self.run.finish(exit_code=0 if summary.get("status") in ("done", "pruned") else 1)
        self.run = None


def trackers(suite: Suite, runs_dir) -> list[RunCallback]:
    return [] if resolve_mode(suite.tracking.wandb) == "disabled" else [WandbTracker(suite, runs_dir)]


# Reading runs back: W&B's transaction log (`run-<id>.wandb`) is a LevelDB-style log of `Record`
# protobufs; wandb 0.31 ships the protobufs but no Python reader, so this is the few lines it takes.

def find_run(runs_dir: str | Path, run_id: str) -> Path:
    found = sorted(Path(runs_dir).glob(f"wandb/*-{run_id}/run-{run_id}.wandb"))
    if not found:
        raise HarnessError(f"no W&B run {run_id} under {runs_dir}/wandb")
    return found[-1]


def _records(path: Path):
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise HarnessError(f"{path} is not a W&B transaction log")
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind == 0:
            break
        buf = chunk if kind in (1, 2) else buf + chunk  # full, first, middle, last
        if kind in (1, 4):
            yield buf


def read_run(path: Path, wait_s: float = 15.0) -> dict:
    """{'run': {id, project, group, job_type, name}, 'config', 'history' (rows), 'summary', 'exit_code'}.

    wandb-core writes the log shortly after `finish()` returns: wait (up to wait_s) for its exit record."""
    deadline = time.monotonic() + wait_s
    while True:
        out = _read_run(path)
        if out["exit_code"] is not None or time.monotonic() > deadline:
            return out
        time.sleep(0.2)


def _read_run(path: Path) -> dict:
    from wandb.proto import wandb_internal_pb2 as pb

    out = {"run": {}, "config": {}, "history": [], "summary": {}, "exit_code": None}

    def put(d: dict, items) -> dict:  # nested keys (an image's path, size, ...) become nested dicts
        for u in items:
            *parents, last = list(u.nested_key) or [u.key]
            node = d
            for k in parents:
                node = node.setdefault(k, {})
            node[last] = json.loads(u.value_json)
        return d

    for raw in _records(path):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            out["run"] = {"id": r.run_id, "project": r.project, "group": r.run_group, "job_type": r.job_type,
                          "name": r.display_name}
            put(out["config"], r.config.update)
        elif kind == "config":
            put(out["config"], rec.config.update)
        elif kind == "history":
            out["history"].append(put({}, rec.history.item))
        elif kind == "summary":
            put(out["summary"], rec.summary.update)
        elif kind == "exit":
            out["exit_code"] = rec.exit.exit_code
    out["config"].pop("_wandb", None)
    return out
