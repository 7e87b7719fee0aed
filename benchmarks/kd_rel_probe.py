"""Why KD-REL (MNIST <- USPS) misses the paper: the teacher on the related data, and each student per class.

Reads finished KD-REL runs (one or more run stores) and the suite's cached teacher; prints Markdown.

usage: python benchmarks/kd_rel_probe.py --runs runs:usps --runs runs-uspsframed:usps_framed [--suite mnist]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from harness.config import load_suite
from harness.data import get_dataset
from harness.loop import predictions
from harness.models import build_model
from harness.store import Store


def predict(model, data) -> torch.Tensor:
    return torch.cat([out.argmax(1) for out, _ in predictions(model, data, "cpu")])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", action="append", required=True, help="RUNS_DIR:RELATED_DATASET")
    ap.add_argument("--suite", default="mnist")
    a = ap.parse_args()
    suite = load_suite(a.suite, "quick")
    spec = get_dataset(suite.dataset)
    test = spec.load("test")
    classes = range(spec.num_classes)
    lines = []
    for item in a.runs:
        runs_dir, related = item.rsplit(":", 1)
        store = Store(runs_dir, suite.name)
        t = json.loads(store.teacher_summary_path.read_text())
        teacher = build_model(suite.teacher.model.name, input_shape=spec.input_shape, num_classes=spec.num_classes)
        teacher.load_state_dict(torch.load(t["path"], weights_only=True))
        rel = get_dataset(related).load("train")
        tp = predict(teacher, rel)
        lines += [f"### {runs_dir} (KD-REL data: {related})", "",
                  f"- Teacher (test acc {t['test_acc']}) on {related} train: accuracy {(tp == rel.y).float().mean():.4f}",
                  f"- {related} labels per class: {torch.bincount(rel.y, minlength=len(classes)).tolist()}",
                  f"- Teacher's argmax per class on {related}: {torch.bincount(tp, minlength=len(classes)).tolist()}",
                  "", "| seed | best | " + " | ".join(f"final, class {c}" for c in classes) + " |",
                  "|---|---|" + "---|" * len(classes)]  # per class: the final student
        for rd in sorted(store.runs(), key=lambda r: r.seed):
            if rd.method != "kd_rel" or not rd.is_done():
                continue
            s = build_model(suite.student.name, input_shape=spec.input_shape, num_classes=spec.num_classes)
            s.load_state_dict(torch.load(rd.student, weights_only=True))
            p = predict(s, test)
            per = [((p == test.y) & (test.y == c)).sum().item() / max(1, (test.y == c).sum().item()) for c in classes]
            best = json.loads(rd.summary_path.read_text())["best_acc"]
            lines.append(f"| {rd.seed} | {best:.4f} | " + " | ".join(f"{v:.2f}" for v in per) + " |")
        lines.append("")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
