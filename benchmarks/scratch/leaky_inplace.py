"""LeakyReLU in place vs out of place, bf16 and fp32, channels-last, on the generator's two large shapes,
with runtime.keep_freed_memory's allocator setting (benchmarks/results/speed-mnist-paper-cpu.md, 2026-11-30 20:50)."""
import torch, time, torch.nn.functional as F
from harness import env
env.set_allocator(True)
torch.set_num_threads(2)
def bench(f, n=10):
    for _ in range(3): f()
    ts=[]
    for _ in range(n):
        t=time.perf_counter(); f(); ts.append(time.perf_counter()-t)
    return round(sorted(ts)[n//2]*1e3, 2)
for dt in [torch.bfloat16, torch.float32]:
  for shape in [(512,128,16,16),(512,64,32,32)]:
    xb = torch.randn(shape).to(dt).contiguous(memory_format=torch.channels_last)
    buf = xb.clone()
    r = {}
    r['copy_'] = bench(lambda: buf.copy_(xb))
    r['copy_+leaky_'] = bench(lambda: F.leaky_relu_(buf.copy_(xb), 0.2))
    r['leaky'] = bench(lambda: F.leaky_relu(xb, 0.2))
    r['leaky out='] = bench(lambda: torch._C._nn.leaky_relu(xb, 0.2, out=buf))
    flat = torch.randn(xb.numel()).to(dt); fb = flat.clone()
    r['flat copy_+leaky_'] = bench(lambda: F.leaky_relu_(fb.copy_(flat), 0.2))
    r['flat copy_'] = bench(lambda: fb.copy_(flat))
    # fwd+bwd
    xg = xb.clone().requires_grad_(); g = torch.ones_like(xb)
    def fb_(inplace):
        y = xg * 1.0
        z = F.leaky_relu(y, 0.2, inplace=inplace)
        z.backward(g)
    r['mul+leaky fwd+bwd inplace'] = bench(lambda: fb_(True))
    r['mul+leaky fwd+bwd'] = bench(lambda: fb_(False))
    print(dt, shape, r)
