"""One evaluation of a suite profile's student on its whole test set, in fp32 against bf16 autocast (what
runtime.eval_precision chooses between), channels-last as the default path runs it: median of 3, alternating,
after one warm-up call each. Untrained students: the time does not depend on the weights.
Run from the repository root, alone on the machine:
  DFAD_DATA=... .venv/bin/python benchmarks/scratch/eval_time.py cifar10:quick cifar10:cpu2h camvid:quick"""
import json
import statistics
import sys
import time

import torch

sys.path.insert(0, ".")
from harness import env  # noqa: E402
from harness.config import load_suite  # noqa: E402
from harness.data import get_dataset  # noqa: E402
from harness.loop import evaluate  # noqa: E402
from harness.runner import build_student  # noqa: E402

torch.set_num_threads(2)
bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
for arg in sys.argv[1:]:
    name, profile = arg.split(":")
    suite = load_suite(name, profile)
    env.set_allocator(suite.runtime.keep_freed_memory)
    test = get_dataset(suite.dataset).load("test")
    torch.manual_seed(0)
    model = build_student(suite).to(memory_format=torch.channels_last)
    times = {"fp32": [], "bf16": []}
    for ac in (None, bf16):
        evaluate(model, test, "cpu", ac, channels_last=True)
    for _ in range(3):
        for key, ac in (("fp32", None), ("bf16", bf16)):
            t = time.perf_counter()
            evaluate(model, test, "cpu", ac, channels_last=True)
            times[key].append(time.perf_counter() - t)
    fp32, bf = statistics.median(times["fp32"]), statistics.median(times["bf16"])
    print(json.dumps({"suite": arg, "student": suite.student.name, "images": len(test), "fp32_s": round(fp32, 2),
                      "bf16_s": round(bf, 2), "ratio": round(fp32 / bf, 2),
                      "runs_fp32": [round(x, 2) for x in times["fp32"]],
                      "runs_bf16": [round(x, 2) for x in times["bf16"]],
                      "evaluations_per_run": -(-suite.budget.iterations // suite.budget.eval_every)}), flush=True)
