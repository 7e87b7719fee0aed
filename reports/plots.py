"""Figures of a suite (matplotlib, Agg: no display needed), each saved as PNG and PDF in the report dir.

accuracy: test accuracy vs iterations, mean ± std band over seeds, teacher as a line; samples: a grid
from each data-free method's final generator; losses: DFAD's student and generator losses; ablation:
accuracy per discrepancy. Each returns the PNG path, or None when there is nothing to draw.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from harness.config import Suite, method_of  # noqa: E402

from harness.errors import first_line  # noqa: E402

from .collect import curves, done_runs, label, metric_name, teacher_summary, warn_once  # noqa: E402


def save(fig, out_dir: Path, name: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "pdf"):
        fig.savefig(out_dir / f"{name}.{ext}", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out_dir / f"{name}.png"


def band(ax, df: pd.DataFrame, col: str, name: str, x: str = "iteration"):
    """Mean line and ± std band over seeds, per evaluation; x = the iteration, or the seeds' mean
    wall time at that iteration in minutes (x="minutes")."""
    df = df.dropna(subset=[col])
    g = df.groupby("iteration")
    stats = pd.DataFrame({"mean": g[col].mean(), "std": g[col].std(ddof=1).fillna(0.0)})
    xs = g["elapsed_s"].mean() / 60 if x == "minutes" else stats.index
    line, = ax.plot(xs, stats["mean"], label=f"{name} (n={df['seed'].nunique()})",
                    marker="o" if len(stats) == 1 else None)  # a single evaluation is a point, not a line
    ax.fill_between(xs, stats["mean"] - stats["std"], stats["mean"] + stats["std"],
                    color=line.get_color(), alpha=0.2, linewidth=0)
    return line


def stored_methods(suite: Suite, runs_dir) -> list[str]:
    """Every method with runs in the store, in table order: a run of a few methods (`--methods`) still
    plots the others already there."""
    from .table import row_order

    return [m for m in row_order([suite], runs_dir, False) if m != "teacher"]


def accuracy(suite: Suite, runs_dir, out_dir: Path, methods: list[str] | None = None,
             name: str = "accuracy", labels: dict[str, str] | None = None, x: str = "iteration") -> Path | None:
    """Test accuracy against iterations, or against wall time (x="minutes": methods at equal cost)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = 0
    for m in methods or stored_methods(suite, runs_dir):
        df = curves(runs_dir, suite.name, m)
        if len(df) and (x != "minutes" or "elapsed_s" in df):
            band(ax, df, "test_acc", (labels or {}).get(m, label(m, suite)), x)
            drawn += 1
    t = teacher_summary(runs_dir, suite.name)
    if "test_acc" in t:
        ax.axhline(t["test_acc"], color="black", linestyle="--", linewidth=1, label=f"Teacher ({t['test_acc']:.3f})")
    if not drawn:
        plt.close(fig)
        return None
    what = metric_name(suite.dataset)
    ax.set(xlabel="wall time (min, mean over seeds)" if x == "minutes" else "iteration", ylabel=what,
           title=f"{suite.name} ({suite.profile}): {what}",
           ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, out_dir, name)


def accuracy_time(suite: Suite, runs_dir, out_dir: Path) -> Path | None:
    """Test accuracy against wall time: methods whose iterations cost differently, read at equal cost."""
    return accuracy(suite, runs_dir, out_dir, name="accuracy-time", x="minutes")


def losses(suite: Suite, runs_dir, out_dir: Path) -> Path | None:
    """Student and generator losses of every DFAD-class method (variants included)."""
    ms = [m for m in stored_methods(suite, runs_dir) if method_of(m, suite.methods.get(m)) == "dfad"]
    frames = {m: df for m in ms if len(df := curves(runs_dir, suite.name, m)) and "loss_S" in df}
    if not frames:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for m, df in frames.items():
        band(axes[0], df, "loss_S", label(m, suite))
        if "loss_G" in df:
            band(axes[1], df, "loss_G", label(m, suite))
    for ax, what in zip(axes, ("student loss (discrepancy)", "generator loss (-discrepancy)")):
        ax.set(xlabel="iteration", title=what)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{suite.name} ({suite.profile}): losses at evaluation points")
    return save(fig, out_dir, "losses")


def samples(suite: Suite, runs_dir, out_dir: Path, n: int = 64) -> Path | None:
    """An 8 x 8 grid per data-free method, from the first finished seed's final generator."""
    grids = {}
    for m in stored_methods(suite, runs_dir):
        for rd in done_runs(runs_dir, suite.name, m)[:1]:
            g = generator_grid(rd, suite.dataset, n)
            if g is not None:
                grids[m] = g
    if not grids:
        return None
    fig, axes = plt.subplots(1, len(grids), figsize=(4 * len(grids), 4.3), squeeze=False)
    for ax, (m, img) in zip(axes[0], grids.items()):
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
        ax.set_title(f"{label(m, suite)}: generated samples", fontsize=10)
        ax.axis("off")
    return save(fig, out_dir, "samples")


def generator_grid(rd, dataset: str, n: int):
    """The run's generator rebuilt from config.yaml and checkpoint.pt, n samples denormalised to [0, 1]."""
    import torch
    import yaml
    from harness.data import get_dataset, image_grid
    from harness.models import build_model

    if not rd.checkpoint.is_file() or not rd.config.is_file():
        return None
    try:  # a damaged checkpoint or config costs its grid, with a warning, not the report
        state = torch.load(rd.checkpoint, map_location="cpu", weights_only=True)
        gen_state = state.get("method", {}).get("modules", {}).get("generator")
        if gen_state is None:  # not a generator-based method
            return None
        cfg = yaml.safe_load(rd.config.read_text())
        p = cfg["params"]
        spec = get_dataset(dataset)
        G = build_model(p.get("generator", "generator_a"), nz=p["nz"], ngf=p["ngf"], input_shape=spec.input_shape)
        G.load_state_dict(gen_state)
    except Exception as e:
        warn_once(f"warning: no sample grid from {rd.path} ({type(e).__name__}: {first_line(e)[:120]})")
        return None
    # running BN statistics, as the method's own sample() does; RANDOM's generator is never trained and normalises
    # each batch by its own statistics (its running ones stay as initialised): its images are drawn that way
    G.train(cfg.get("method_class", cfg.get("method")) == "random")
    with torch.no_grad():
        x = G(torch.randn(n, p["nz"], generator=torch.Generator().manual_seed(0))).float()
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    img = image_grid((x * std + mean).clamp(0, 1), nrow=8, padding=2, pad_value=1.0).permute(1, 2, 0).numpy()
    return img[..., 0] if spec.input_shape[0] == 1 else img


def ablation(suites: list[Suite], runs_dir, out_dir: Path, name: str = "ablation-curves") -> Path | None:
    """One panel per dataset, one band per loss."""
    from .ablation import ablation_rows

    rows = ablation_rows(suites)
    fig, axes = plt.subplots(1, len(suites), figsize=(6 * len(suites), 4), squeeze=False)
    drawn = 0
    for ax, s in zip(axes[0], suites):
        for shown, by_suite in rows.values():
            df = curves(runs_dir, s.name, by_suite[s.name]) if s.name in by_suite else pd.DataFrame()
            if len(df):
                band(ax, df, "test_acc", shown)
                drawn += 1
        ax.set(xlabel="iteration", ylabel=metric_name(s.dataset), title=f"{s.name} ({s.dataset}): loss ablation",
               ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if not drawn:
        plt.close(fig)
        return None
    return save(fig, out_dir, name)
