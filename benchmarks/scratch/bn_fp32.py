"""The generator's BatchNorm + LeakyReLU in bf16 against casting to fp32 around them, forward and forward+backward,
with the allocator setting (benchmarks/results/speed-mnist-paper-cpu.md, 2026-11-30 20:44 section)."""
import torch, time, torch.nn.functional as F
from harness import env
env.set_allocator(True)
torch.set_num_threads(2)
def bench(f, n=8):
    for _ in range(2): f()
    ts=[]
    for _ in range(n):
        t=time.perf_counter(); f(); ts.append(time.perf_counter()-t)
    return round(sorted(ts)[n//2]*1e3, 2)
for shape in [(512,128,16,16),(512,64,32,32)]:
    C = shape[1]
    xb = torch.randn(shape).bfloat16().contiguous(memory_format=torch.channels_last)
    xf = xb.float()
    w, b = torch.ones(C), torch.zeros(C)
    rm, rv = torch.zeros(C), torch.ones(C)
    r = {}
    r['to_fp32'] = bench(lambda: xb.float())
    r['to_bf16'] = bench(lambda: xf.bfloat16())
    r['bn_bf16'] = bench(lambda: F.batch_norm(xb, rm, rv, w, b, True, 0.1, 1e-5))
    r['bn_fp32'] = bench(lambda: F.batch_norm(xf, rm, rv, w, b, True, 0.1, 1e-5))
    r['leaky_bf16'] = bench(lambda: F.leaky_relu_(xb, 0.2))
    r['leaky_fp32'] = bench(lambda: F.leaky_relu_(xf, 0.2))
    r['bn+leaky bf16'] = bench(lambda: F.leaky_relu_(F.batch_norm(xb, rm, rv, w, b, True, 0.1, 1e-5), 0.2))
    r['cvt+bn+leaky+cvt fp32'] = bench(lambda: F.leaky_relu_(F.batch_norm(xb.float(), rm, rv, w, b, True, 0.1, 1e-5), 0.2).bfloat16())
    xg = xb.clone().requires_grad_()
    def fb(x):
        y = F.leaky_relu(F.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5), 0.2)
        y.backward(torch.ones_like(y))
    r['fwd+bwd bf16'] = bench(lambda: fb(xg))
    def fb32(x):
        y = F.leaky_relu(F.batch_norm(x.float(), rm, rv, w, b, True, 0.1, 1e-5), 0.2).bfloat16()
        y.backward(torch.ones_like(y))
    r['fwd+bwd via fp32'] = bench(lambda: fb32(xg))
    print(shape, r)
