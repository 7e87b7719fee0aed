"""Students trained on the default path (bf16 on a CPU with native bf16), scored at every evaluation both in fp32
(what the loop records by default since runtime.eval_precision) and in bf16 (what it recorded before): best and
final accuracy each way, and how many of the 10,000 test predictions differ. MNIST quick profile, DFAD, the suite's
teacher (trained or taken from the runs dir's cache). Writes one JSON object per seed to stdout.
Run from the repository root, alone on the machine:
  DFAD_DATA=... .venv/bin/python benchmarks/scratch/eval_precision.py [--seeds 0,1,2] [--runs-dir runs]"""
import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, ".")
from harness import env  # noqa: E402
from harness.api import distill  # noqa: E402
from harness.config import load_suite  # noqa: E402
from harness.data import get_dataset  # noqa: E402
from harness.loop import predictions  # noqa: E402
from harness.runner import build_student  # noqa: E402
from harness.teacher import ensure_teacher  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--seeds", default="0,1,2")
ap.add_argument("--runs-dir", default="runs")
ap.add_argument("--suite", default="mnist")
ap.add_argument("--profile", default="quick")
ap.add_argument("--method", default="dfad")
a = ap.parse_args()

suite = load_suite(a.suite, a.profile)
env.apply_runtime(suite.runtime)
device = env.resolve_device(suite.runtime.device)
assert env.resolve_precision("auto", device) == torch.bfloat16, "this machine trains in fp32: nothing to compare"
test = get_dataset(suite.dataset).load("test")
teacher = ensure_teacher(suite, Path(a.runs_dir), device, log=lambda m: print(m, file=sys.stderr))
bf16 = lambda: torch.autocast(device.type, dtype=torch.bfloat16)  # noqa: E731

for seed in (int(s) for s in a.seeds.split(",")):
    torch.manual_seed(seed)
    student, rows = build_student(suite), []

    def on_eval(row, student=student):
        p32 = torch.cat([o.argmax(1) for o, _ in predictions(student, test, device)])
        p16 = torch.cat([o.argmax(1) for o, _ in predictions(student, test, device, bf16)])
        y = test.y.to(device)
        rows.append({"iteration": row["iteration"], "fp32": (p32 == y).sum().item() / len(y),
                     "bf16": (p16 == y).sum().item() / len(y), "differ": int((p32 != p16).sum())})
        assert rows[-1]["fp32"] == row["test_acc"]  # the loop's own evaluation is the fp32 one

    res = distill(teacher.model, student, a.method, test, seed=seed, iterations=suite.budget.iterations,
                  eval_every=suite.budget.eval_every, on_eval=on_eval,
                  **{k: v for k, v in (suite.methods.get(a.method) or {}).items() if k != "method"})
    out = {"seed": seed, "teacher_acc": teacher.acc, "evaluations": len(rows),
           "best_fp32": max(r["fp32"] for r in rows), "best_bf16": max(r["bf16"] for r in rows),
           "final_fp32": rows[-1]["fp32"], "final_bf16": rows[-1]["bf16"],
           "max_abs_diff_points": round(100 * max(abs(r["fp32"] - r["bf16"]) for r in rows), 3),
           "max_differ": max(r["differ"] for r in rows), "mean_differ": sum(r["differ"] for r in rows) / len(rows),
           "rows": rows}
    print(json.dumps(out), flush=True)
