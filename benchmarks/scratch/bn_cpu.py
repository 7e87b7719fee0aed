"""BatchNorm (training mode) and LeakyReLU on one MNIST-paper generator activation (512 x 64 x 32 x 32, bf16,
channels-last), against a plain copy of it (the memory bandwidth), eager decompositions and inductor.
Run from the repository root, alone on the machine: .venv/bin/python benchmarks/scratch/bn_cpu.py
(2026-11-30: the figures in benchmarks/results/speed-mnist-paper-cpu.md, "Where the iteration goes on the AMX
machine"; n = 1, best of 5 after one warm-up call.)"""
import time

import torch

torch.set_num_threads(2)
x = torch.randn(512, 64, 32, 32).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
bn = torch.nn.BatchNorm2d(64)


def t(f, n=5):
    f()
    best = 1e9
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best * 1000


y = torch.empty_like(x)
ms = t(lambda: y.copy_(x))
print(f"copy {ms:.1f} ms, {2 * x.numel() * 2 / ms / 1e6:.1f} GB/s")
print(f"BatchNorm (train), bf16 {t(lambda: bn(x)):.1f} ms")
print(f"leaky_relu_ {t(lambda: torch.nn.functional.leaky_relu_(y, 0.2)):.1f} ms")
print(f"var_mean over (N, H, W) {t(lambda: torch.var_mean(x, dim=(0, 2, 3))):.1f} ms")
xs = x.permute(0, 2, 3, 1).reshape(-1, 64)  # the NHWC memory as (N*H*W, C), no copy
print(f"per-channel sum (float32) of the 2-D view {t(lambda: xs.sum(0, dtype=torch.float32)):.1f} ms")


def bn_lrelu(v):
    return torch.nn.functional.leaky_relu(bn(v), 0.2)


print(f"eager BatchNorm + LeakyReLU {t(lambda: bn_lrelu(x)):.1f} ms")
compiled = torch.compile(bn_lrelu)
with torch.no_grad():
    print(f"inductor BatchNorm + LeakyReLU (no_grad) {t(lambda: compiled(x)):.1f} ms")
    print(f"eager BatchNorm + LeakyReLU (no_grad) {t(lambda: bn_lrelu(x)):.1f} ms")
