import time, torch, torch.nn.functional as F, sys
sys.path.insert(0, '.')
from harness.upconv import upsample_conv
torch.set_num_threads(2)
from harness import env
if '--glibc-default' not in sys.argv:
    env.set_allocator(True)  # as runs have it (runtime.keep_freed_memory); the first published run did not
def tweight(w):
    # (Cout, Cin, 3, 3) -> (Cin, Cout, 4, 4) transposed-conv kernel
    w0, w1, w2 = w.unbind(2)
    r = torch.stack([w2, w1 + w2, w0 + w1, w0], 2)  # (Cout, Cin, 4, 3)
    c0, c1, c2 = r.unbind(3)
    k = torch.stack([c2, c1 + c2, c0 + c1, c0], 3)  # (Cout, Cin, 4, 4)
    return k.transpose(0, 1)
def deconv(x, conv):
    return F.conv_transpose2d(x, tweight(conv.weight), conv.bias, stride=2, padding=1)
torch.manual_seed(0)
conv = torch.nn.Conv2d(8, 5, 3, padding=1).double()
x = torch.randn(2, 8, 6, 7, dtype=torch.double)
ref = conv(F.interpolate(x, scale_factor=2))
print("max err", (deconv(x, conv) - ref).abs().max().item())
for (n, ci, co, h) in [(512, 128, 128, 8), (512, 128, 64, 16)]:
    conv = torch.nn.Conv2d(ci, co, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(n, ci, h, h).contiguous(memory_format=torch.channels_last).requires_grad_()
    for name, f in [("phase", upsample_conv), ("deconv", deconv)]:
        ts = []
        for r in range(6):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = f(x, conv)
            y.float().sum().backward()
            ts.append(time.perf_counter() - t0)
        tf = []
        with torch.no_grad():
            for r in range(6):
                t0 = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    y = f(x, conv)
                tf.append(time.perf_counter() - t0)
        print(n, ci, co, h, name, "fwd+bwd %.1f ms" % (1000 * sorted(ts)[2]), "fwd %.1f ms" % (1000 * sorted(tf)[2]), y.is_contiguous(memory_format=torch.channels_last))
