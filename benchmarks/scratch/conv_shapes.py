import sys; sys.path.insert(0, '.'); sys.path.insert(0, 'benchmarks')
import torch
from torch.profiler import ProfilerActivity, profile
from profile_step import default_method
from harness.cli import _load
m, _ = default_method(_load("mnist", "paper", [], announce=False), "dfad")
m.step(0); m.step(1)
with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
    m.step(2)
rows = [e for e in prof.key_averages(group_by_input_shape=True) if e.key in ("aten::convolution", "aten::convolution_backward", "aten::native_batch_norm", "aten::leaky_relu_", "aten::native_batch_norm_backward")]
rows.sort(key=lambda e: -e.cpu_time_total)
for e in rows[:24]:
    print(f"{e.key:32s} {e.count:3d} {e.cpu_time_total/1000:8.1f} ms  {str(e.input_shapes)[:110]}")
