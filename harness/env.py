"""Where a run happens: device, precision, threads, machine name, versions and git commit."""
from __future__ import annotations

import ctypes
import functools
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from .errors import HarnessError

REPO = Path(__file__).resolve().parent.parent


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise HarnessError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise HarnessError(f"device {name!r} requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise HarnessError(f"device {name!r} requested but this machine shows {torch.cuda.device_count()} GPU(s)")
    return dev


def check_cuda_graph(cuda_graph: bool, dev: torch.device) -> None:
    if cuda_graph and dev.type != "cuda":
        raise HarnessError(f"runtime.cuda_graph=true needs a CUDA device, and this run's device is {dev}")


def runtime_device(runtime) -> torch.device:
    """The suite's device, checked against its CUDA-only switches before any run starts. A GPU other than the
    first (`cuda:1`) becomes the process's current device: streams, graphs and caches made without a device
    argument then belong to it."""
    dev = resolve_device(runtime.device)
    check_cuda_graph(runtime.cuda_graph, dev)
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev)
    return dev


@functools.lru_cache
def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        # tensor-core bf16 is compute capability 8.0 (Ampere) and later; is_bf16_supported() also says True on
        # a V100 or T4, where bf16 is emulated (slow, and cuDNN has no bf16 convolutions there)
        return torch.cuda.get_device_capability(device) >= (8, 0)
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def channels_last_hazard(device: torch.device, *modules: torch.nn.Module) -> str | None:
    """Why channels-last must not train these modules on this device, or None. oneDNN's CPU kernel for the weight
    gradient of a 1x1 convolution with a stride (or padding) writes past its workspace when the layout is
    channels-last and the input channels are fewer than its block (8 with AVX2, 16 with AVX-512): heap
    corruption, a hang, or wrong gradients (uxlfoundation/oneDNN#6035). Measured here with torch 2.14.1 on an
    AVX2 EPYC: 2-7 input channels crash, 1 and 8+ do not; 16 is the bound for either block."""
    if device.type != "cpu":
        return None
    for module in modules:
        for name, m in module.named_modules():
            if (isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) and m.weight.requires_grad
                    and m.in_channels // m.groups < 16
                    and (m.stride != (1, 1) or m.padding not in ((0, 0), "valid", "same"))):
                how = f"stride {m.stride[0]}" if m.stride != (1, 1) else f"padding {m.padding[0]}"
                return (f"{type(module).__name__}.{name} is a 1x1 convolution with {how} and "
                        f"{m.in_channels // m.groups} input channels, whose channels-last weight gradient oneDNN "
                        f"corrupts memory on CPUs (uxlfoundation/oneDNN#6035)")
    return None


def resolve_precision(setting: str, device: torch.device) -> torch.dtype | None:
    """None = fp32. `auto` uses bf16 autocast where the hardware has it natively."""
    if setting not in ("auto", "fp32", "bf16"):
        raise HarnessError(f"precision {setting!r}: use auto, fp32 or bf16")
    if setting == "fp32":
        return None
    if setting == "bf16" or native_bf16(device):
        return torch.bfloat16
    return None


@functools.lru_cache
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {cpu_model()} ({torch.get_num_threads()} threads)"


@functools.lru_cache
def git_commit() -> str:
    if os.environ.get("DFAD_GIT_COMMIT"):  # named by whoever copied the tree (a lent GPU machine's copy can
        return os.environ["DFAD_GIT_COMMIT"]  # carry a stale .git): it wins over what git says there
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=5)
        commit = out.stdout.strip() if out.returncode == 0 else "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("-dirty" if dirty and commit != "unknown" else "")
    except (OSError, subprocess.SubprocessError):  # no git, and DFAD_GIT_COMMIT unset
        return "unknown"


def versions() -> dict[str, str]:
    from . import __version__

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision_version(),
            "dfad_bench": __version__}


def torchvision_version() -> str:
    """torchvision.__version__ (with its build label, "0.29.1+cu130") without importing torchvision, which costs a
    process over a second (its ops import torch._dynamo) that a run on cached data never needs."""
    import importlib.util
    import re

    if "torchvision" in sys.modules:
        return sys.modules["torchvision"].__version__
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.origin:
        return "not installed"
    try:
        found = re.search(r"^__version__ = ['\"]([^'\"]+)['\"]", (Path(spec.origin).parent / "version.py").read_text(),
                          re.M)
    except OSError:
        found = None
    return found.group(1) if found else "unknown"


def thread_count(n: int | None = None) -> int:
    """The threads a process uses: the suite's setting, else OMP_NUM_THREADS, else every core."""
    try:
        omp = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        omp = 0
    return n or (omp if omp > 0 else 0) or os.cpu_count() or 1


def set_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)
    elif os.environ.get("OMP_NUM_THREADS") is None:
        torch.set_num_threads(os.cpu_count() or 1)


# glibc's mallopt parameters, and its defaults for them
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
MMAP_MAX_DEFAULT, TRIM_THRESHOLD_DEFAULT = 65536, 128 * 1024


@functools.lru_cache
def _libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") else None
    except OSError:  # not glibc (macOS, musl): nothing to set
        return None


def allocator_settable() -> bool:
    """Whether set_allocator can do anything here (glibc)."""
    return _libc() is not None


def set_allocator(keep_freed_memory: bool) -> bool:
    """glibc serves blocks over 32 MB with mmap and unmaps them on free, so every large activation of every
    iteration is page-faulted in afresh. keep_freed_memory=True: all blocks come from the heap and freed memory
    stays there for the next iteration (RSS stays at its peak). False: glibc's defaults. Process-wide, and
    meant to be set once, at the start; returns whether it could be set."""
    libc = _libc()
    if libc is None:
        return False
    mmap_max, trim = (0, 2**31 - 1) if keep_freed_memory else (MMAP_MAX_DEFAULT, TRIM_THRESHOLD_DEFAULT)
    return bool(libc.mallopt(M_MMAP_MAX, mmap_max)) and bool(libc.mallopt(M_TRIM_THRESHOLD, trim))


def apply_runtime(runtime, threads: int | None = None) -> None:
    """The process-wide part of a suite's `runtime:` (threads, the CPU allocator, determinism and with it
    cudnn.benchmark), for every command that trains: runs, teachers, tuning, the launcher's jobs."""
    set_threads(threads or runtime.threads)
    set_allocator(runtime.keep_freed_memory)
    set_determinism(runtime.deterministic)


def set_determinism(on: bool) -> None:
    """on: deterministic algorithms where PyTorch has them (ops without one warn and run), cuBLAS included;
    off: cudnn.benchmark picks the fastest convolution algorithms."""
    if on:  # read when cuBLAS starts: before the first matmul on a GPU (a value the user set is kept)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if on or torch.are_deterministic_algorithms_enabled():  # the call imports torch._inductor (over a second)
        torch.use_deterministic_algorithms(on, warn_only=True)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = not on
        torch.backends.cudnn.deterministic = on
