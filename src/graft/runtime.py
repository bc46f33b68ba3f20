"""Run-time decisions about the machine: device, precision, threads; and the environment record.

Defaults are decided here, at run time, so they are right on this 2-core CPU without fast bf16
(fp32, all cores for intra-op threads) and still right on a GPU (bf16 autocast). Also here: the
deterministic mode of ``--deterministic``, and the signal handling that turns SIGTERM and Ctrl-C
into a checkpoint and a clean exit.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import resource
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any, Literal

import torch

from graft.errors import UsageError


def select_device(name: str = "auto", field: str = "hardware.device") -> torch.device:
    """``auto``: the GPU if there is one, else the CPU. ``field`` names the setting in errors."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(
            f"{field}: unknown device {name!r}", hint="use auto, cpu or cuda"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"{field}: cuda was asked for but no GPU is available")
    return device


Precision = Literal["fp32", "bf16"]


def fast_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: a GPU with bf16, or a CPU with AVX512-BF16
    or AMX tiles. Without them bf16 is emulated on a CPU and 6-180x slower than fp32 (measured
    on an AVX2-only AMD EPYC); with AMX a bf16 matmul ran 3.8x faster than fp32."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_precision(requested: str, device: torch.device, cnn: bool = False) -> Precision:
    """``train.precision``: ``auto`` is bf16 autocast where the hardware computes bf16 natively
    (:func:`fast_bf16`) and fp32 elsewhere, except for a convolutional network on a CPU: there
    fp32 even with AMX (EfficientNet-Lite0 at 64 px, 2,000 Fashion-MNIST images, 3 epochs, on
    an AMX Xeon: fp32 34.8 s, bf16 51.2 s — its depthwise convolutions and the casts between
    them gain nothing from bf16 —, while MiniLM ran 1.35x faster in bf16). ``fp32`` and ``bf16``
    are taken as asked (bf16 on a CPU without native support works, slowly). Weights, optimizer
    state and the loss stay fp32."""
    if requested == "auto":
        cpu_cnn = cnn and device.type == "cpu"
        return "bf16" if fast_bf16(device) and not cpu_cnn else "fp32"
    if requested == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError("train.precision: bf16 was asked for, but this GPU has no bf16")
    if requested not in ("fp32", "bf16"):
        raise UsageError(f"train.precision: unknown precision {requested!r}")
    return "bf16" if requested == "bf16" else "fp32"


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast for ``precision == "bf16"`` (on the CPU or a GPU); plain fp32 otherwise."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def set_threads(threads: int | None) -> int:
    """Intra-op threads: all cores by default (a 2-core CPU runs matmuls at ~2x with 2 threads),
    shared out among the processes of a distributed run on this machine (torchrun's
    ``LOCAL_WORLD_SIZE``)."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    n = threads or max(1, len(os.sched_getaffinity(0)) // local)
    torch.set_num_threads(n)
    return n


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


@functools.cache  # once per process
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse; whether it now does.

    By default glibc maps every block above 32 MB (and most above 128 KB) fresh from the kernel
    and unmaps it on free. A training step frees and allocates the same tensors every time (the
    word-embedding gradient of a BERT is 47 MB, the bf16 copies of the weights a few hundred KB
    each), so each step touches new pages and pays a page fault per 4 KB: on a MiniLM step that
    was a quarter of the time (``benchmarks/b7_profile.py``). Served from the heap and kept
    there, the same memory is reused warm. It changes where memory comes from, never a result.
    ``GRAFT_MALLOC_TUNING=0`` leaves malloc as it is; not glibc (macOS, musl): nothing to do.
    """
    if os.environ.get("GRAFT_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    # mallopt returns 1 on success. No mmap: large blocks come from the heap, and the heap's
    # top is given back to the kernel only past 1 GiB free.
    return bool(mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def environment() -> dict[str, Any]:
    """Versions and hardware, recorded with every run."""
    import timm
    import transformers

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "timm": timm.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cores": len(os.sched_getaffinity(0)),
        "cpu_flags": list(cpu_flags()),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


# The instruction-set extensions that decide what is fast on a CPU: bf16 (AVX512-BF16, AMX) and
# int8 (VNNI, AMX-INT8) kernels of torch and ONNX Runtime.
CPU_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)


@functools.cache
def cpu_flags() -> tuple[str, ...]:
    """Which of :data:`CPU_FLAGS` this CPU has (from /proc/cpuinfo; empty elsewhere)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return tuple(flag for flag in CPU_FLAGS if flag in present)
    return ()


def int8_kernels() -> str:
    """The int8 matrix instructions this CPU offers: ``"amx"``, ``"vnni"`` or ``"none"`` (int8
    then multiplies in AVX2 with 16-bit intermediates, which can saturate: see
    :mod:`graft.deploy.quantize`)."""
    flags = cpu_flags()
    if "amx_int8" in flags:
        return "amx"
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        return "vnni"
    return "none"


def _cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


@contextlib.contextmanager
def no_grad_eval(model: torch.nn.Module) -> Iterator[None]:
    """Evaluation mode and no autograd, restoring the module's train/eval flags afterwards."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        for m, training in modes.items():
            m.training = training


@contextlib.contextmanager
def deterministic_mode(enabled: bool) -> Iterator[None]:
    """With ``enabled``: only deterministic algorithms (an op without a deterministic
    implementation raises instead of varying silently), cuDNN without autotuning, and cuBLAS
    with a fixed workspace (``CUBLAS_WORKSPACE_CONFIG``, read when CUDA starts: set here unless
    the user set it). The previous settings come back afterwards. The seeds are set by the
    caller (every run seeds python, numpy and torch from ``train.seed``)."""
    if not enabled:
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[2:]


class StopRequest:
    """Whether SIGTERM or SIGINT asked training to stop (see :func:`stop_on_signals`)."""

    def __init__(self) -> None:
        self.signal_number: int | None = None

    @property
    def requested(self) -> bool:
        return self.signal_number is not None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signal_number).name if self.signal_number else ""


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """While the block runs, the first SIGTERM or SIGINT (Ctrl-C) only sets the flag of the
    returned :class:`StopRequest`: the training loop finishes its step, commits a checkpoint and
    raises :class:`~graft.errors.Interrupted`. A second signal aborts at once: SIGINT raises
    ``KeyboardInterrupt`` wherever the program is, SIGTERM ends the process (its default).
    Outside the main thread (where Python cannot install handlers) nothing changes."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(number: int, _frame: FrameType | None) -> None:
        request.signal_number = number
        # The next one aborts: the user (or the scheduler) insists.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        # os.write, not print: a handler that prints while the program is printing would hit
        # "reentrant call" in Python's buffered stderr.
        note = (
            f"\n{signal.Signals(number).name}: stopping after this step with a checkpoint "
            "(send it again to abort at once)\n"
        )
        with contextlib.suppress(OSError):
            os.write(2, note.encode())

    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def end_with_parent(sig: int = signal.SIGTERM) -> None:
    """On Linux, have this process sent ``sig`` when its parent dies (``PR_SET_PDEATHSIG``): a
    supervisor killed with SIGKILL would otherwise leave its worker processes orphaned, serving
    or training on. Elsewhere nothing changes."""
    if sys.platform != "linux":
        return
    import ctypes

    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(1, int(sig))  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), sig)
