"""The generator's BatchNorm + LeakyReLU on its two large activations (MNIST paper, batch 512, channels-last), with
runtime.keep_freed_memory's allocator setting (benchmarks/results/speed-mnist-paper-cpu.md, section "2026-11-30
20:44 UTC: where the iteration goes with the allocator setting"). Median of 10 after 3 warm-up calls, in ms.
1. LeakyReLU in place against out of place, bf16 and fp32. In-place ops get their input copied into one reused
   buffer each call (the copy is timed alone too), so no call sees another's output.
2. BatchNorm + LeakyReLU in bf16 against casting to fp32 around them, forward and forward+backward.
Run from the repository root, alone on the machine: .venv/bin/python benchmarks/scratch/bn_leaky.py"""
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, ".")
from harness import env  # noqa: E402

env.set_allocator(True)
torch.set_num_threads(2)
SHAPES = [(512, 128, 16, 16), (512, 64, 32, 32)]


def bench(f, n=10):
    for _ in range(3):
        f()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return round(sorted(ts)[n // 2] * 1e3, 2)


def leaky_inplace(dt, shape):
    x = torch.randn(shape).to(dt).contiguous(memory_format=torch.channels_last)
    buf, g = x.clone(), torch.ones_like(x)
    xg = x.clone().requires_grad_()

    def fwd_bwd(inplace):
        F.leaky_relu(xg * 1.0, 0.2, inplace=inplace).backward(g)

    return {"copy_": bench(lambda: buf.copy_(x)),
            "copy_ + leaky_relu_": bench(lambda: F.leaky_relu_(buf.copy_(x), 0.2)),
            "leaky_relu": bench(lambda: F.leaky_relu(x, 0.2)),
            "mul + leaky_relu_, fwd+bwd": bench(lambda: fwd_bwd(True)),
            "mul + leaky_relu, fwd+bwd": bench(lambda: fwd_bwd(False))}


def bn_fp32(shape):
    c = shape[1]
    x = torch.randn(shape).bfloat16().contiguous(memory_format=torch.channels_last)
    xg = x.clone().requires_grad_()
    w, b, rm, rv = torch.ones(c), torch.zeros(c), torch.zeros(c), torch.ones(c)

    def layer(v, fp32):
        y = F.batch_norm(v.float() if fp32 else v, rm, rv, w, b, True, 0.1, 1e-5)
        y = F.leaky_relu(y, 0.2, inplace=not y.requires_grad)
        return y.bfloat16() if fp32 else y

    def fwd_bwd(fp32):
        y = layer(xg, fp32)
        y.backward(torch.ones_like(y))

    return {"bn + leaky, bf16": bench(lambda: layer(x, False)),
            "cast + bn + leaky + cast, fp32": bench(lambda: layer(x, True)),
            "fwd+bwd, bf16": bench(lambda: fwd_bwd(False)),
            "fwd+bwd, via fp32": bench(lambda: fwd_bwd(True))}


for dt in (torch.bfloat16, torch.float32):
    for shape in SHAPES:
        print("leaky", dt, shape, leaky_inplace(dt, shape), flush=True)
for shape in SHAPES:
    print("bn", shape, bn_fp32(shape), flush=True)
