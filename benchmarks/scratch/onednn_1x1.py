"""Which convolutions' channels-last weight gradient crashes or hangs on this CPU (uxlfoundation/oneDNN#6035), each in
its own process with a time limit: the evidence behind `harness.env.channels_last_hazard`.

    .venv/bin/python benchmarks/scratch/onednn_1x1.py > benchmarks/results/onednn-1x1-channels-last-<machine>.txt
"""
import itertools
import platform
import subprocess
import sys

import torch

CASE = r'''
import sys, torch, torch.nn.functional as F
torch.set_num_threads(1)
cin, k, s, hw, layout = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
mf = torch.channels_last if layout == "nhwc" else torch.contiguous_format
x = torch.randn(8, cin, hw, hw).contiguous(memory_format=mf)
w = torch.randn(8, cin, k, k).contiguous(memory_format=mf).requires_grad_()
ref = torch.nn.grad.conv2d_weight(x.contiguous(), w.shape, torch.ones(8, 8, (hw - k) // s + 1, (hw - k) // s + 1), stride=s)
for _ in range(3):
    w.grad = None
    F.conv2d(x, w, stride=s).sum().backward()
print("ok" if torch.allclose(w.grad, ref, rtol=1e-3, atol=1e-3) else "WRONG")
'''


def run(*args) -> str:
    try:
        r = subprocess.run([sys.executable, "-c", CASE, *map(str, args)], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "HANG"
    if r.returncode == 0:
        return r.stdout.strip()
    return {-11: "SEGV", -6: "ABORT"}.get(r.returncode, f"rc={r.returncode}")


def main() -> None:
    flags = open("/proc/cpuinfo").read() if platform.system() == "Linux" else ""
    isa = [f for f in ("avx512f", "avx512_bf16", "amx_tile", "avx2") if f" {f}" in flags]
    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, flags {' '.join(isa)}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print("# weight gradient of conv2d(x [8, cin, hw, hw], w [8, cin, k, k], stride s), 3 backward passes, one thread")
    print("layout k s cin hw result")
    for layout, k, s, cin, hw in itertools.product(("nhwc", "nchw"), (1, 3), (1, 2), (1, 2, 4, 7, 8, 12, 15, 16),
                                                   (8, 32, 33)):
        if layout == "nchw" and (k, s) != (1, 2):  # the control: the same shapes channels-first
            continue
        print(layout, k, s, cin, hw, run(cin, k, s, hw, layout), flush=True)


if __name__ == "__main__":
    main()
