"""Where and how tensors run: device, autocast precision, memory format, seeds, library versions."""
from __future__ import annotations

import contextlib
import os
import importlib.metadata as md
import platform
import random
import signal
import threading
import time
from pathlib import Path
from typing import ContextManager, Iterator, Optional

import numpy as np
import torch

from ffpvad.config import Config
from ffpvad.training.distributed import backend_override, local_rank, local_world_size
from ffpvad.errors import STOP_SIGNALS, UserError


def resolve_device(name: str) -> torch.device:
    """The torch device of ``--device``.  Under torchrun (ffpvad/training/distributed.py) a CUDA device is cuda:LOCAL_RANK, one GPU
    per process; choose the GPUs with CUDA_VISIBLE_DEVICES rather than an index."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device={name} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device={name} but CUDA is not available here: use --device=cpu or auto")
    own = local_rank()
    if device.type == "cuda" and own is not None:
        if device.index is not None and device.index != own and local_world_size() > 1:
            raise UserError(f"--device={name} under torchrun: each process uses cuda:LOCAL_RANK; pass --device=cuda "
                            f"or auto (and CUDA_VISIBLE_DEVICES to choose the GPUs)")
        if device.index is None and own >= torch.cuda.device_count() and backend_override() == "gloo":
            own %= torch.cuda.device_count()  # gloo lets processes share a GPU (distributed.BACKEND_ENV)
        device = torch.device("cuda", own if device.index is None else device.index)
    return device


def cpu_has_fast_bf16() -> bool:
    """True where oneDNN runs bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 autocast is emulated and slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_has_vnni() -> bool:
    """True where the CPU multiplies int8 with 32-bit accumulation (AVX512-VNNI, AVX-VNNI or AMX; Linux flags):
    there int8 activations may use all 8 bits (ffpvad/models/quantize.py)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


def resolve_amp(cfg: Config, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype, or None for plain fp32.

    auto: on CUDA, bf16 where the GPU supports it, else fp16 (with gradient scaling in the engine).  On the CPU,
    bf16 where the processor runs it natively: bench/speed.py measured it 1.6-1.9x faster than fp32 for FFP on the
    project's 2-core machine (docs/speed.md 'Compute flags'), with the same toy AUC; fp32 elsewhere.
    """
    choice = cfg.amp
    if choice == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else None
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[choice]


def use_channels_last(cfg: Config, device: torch.device) -> bool:
    """auto: NHWC on CUDA, and on the CPU together with native bf16 (measured 2.3x faster evaluation than NCHW)."""
    if cfg.channels_last == "auto":
        return device.type == "cuda" or cpu_has_fast_bf16()
    return cfg.channels_last == "on"


def eval_batch_size(cfg: Config, device: torch.device) -> int:
    """Frames per evaluation batch: --eval_batch_size, or 4 on the CPU (the fastest measured, docs/speed.md) and 32
    on CUDA."""
    return cfg.eval_batch_size or (32 if device.type == "cuda" else 4)


def autocast(device: torch.device, dtype: Optional[torch.dtype]) -> ContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def other_cpu_load(interval: float = 0.25) -> Optional[float]:
    """How many cores other processes keep busy right now: the machine's busy time (Linux /proc/stat) over
    ``interval`` seconds less this process's own, per second; None where the system does not report it.  (Not
    the load average: it still counts, for a minute, work that has just ended.)"""
    def busy_ticks() -> int:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        return sum(values) - values[3] - values[4]  # all but idle and iowait (guest time is inside user)

    try:
        hz = os.sysconf("SC_CLK_TCK")
        start, own_start, busy_start = time.monotonic(), sum(os.times()[:2]), busy_ticks()
        time.sleep(interval)
        seconds = time.monotonic() - start
        busy = (busy_ticks() - busy_start) / hz - (sum(os.times()[:2]) - own_start)
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return max(0.0, busy / seconds)


def cpu_busy() -> Optional[float]:
    """The cores other processes keep busy, when that is at least half of them (None otherwise, and where the
    system does not say).  Two torch processes that each use every core stall each other: on the project's
    2-core machine evaluation fell from 49 to 7-9 frames/s (docs/speed.md)."""
    load = other_cpu_load()
    return load if load is not None and load >= max(1.0, 0.5 * (os.cpu_count() or 1)) - 0.25 else None


def configure_threads(cfg: Config, device: Optional[torch.device] = None) -> None:
    """--num_threads, and on the CPU a warning when other work already loads it (the default uses every core)."""
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    elif (device is None or device.type == "cpu") and (load := cpu_busy()) is not None:
        print(f"note: the CPU is already busy (other processes use {load:.1f} of {os.cpu_count()} cores) and this "
              f"run uses {torch.get_num_threads()} threads: two heavy torch processes stall each other; give this "
              f"one (or the other) --num_threads=1, or wait for the other to end")


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()  # Python installs handlers only there


def _replaceable(signum: int) -> bool:
    """A Python-level handler that is not 'ignore' (a job started in the background ignores SIGINT: keep that)."""
    handler = signal.getsignal(signum)
    return handler is not None and handler is not signal.SIG_IGN


@contextlib.contextmanager
def signals_held(*signums: int) -> Iterator[None]:
    """Hold the given signals (SIGINT, SIGTERM) until the block ends, then deliver them: around a checkpoint write,
    the file is complete before Ctrl-C, or torchrun/SLURM stopping the job, takes effect.  If the block raises,
    the held signals are dropped (the error wins).  A no-op outside the main thread."""
    if not _main_thread():
        yield
        return
    received: list[int] = []
    previous = {s: signal.getsignal(s) for s in signums if _replaceable(s)}
    for signum in previous:
        signal.signal(signum, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    for signum in dict.fromkeys(received):
        signal.raise_signal(signum)


@contextlib.contextmanager
def _handled_by(signums, handler) -> Iterator[None]:
    """In the block, ``handler`` handles the given signals (those Python may replace); after it, what did before.
    Off the main thread, where Python cannot set handlers, the block runs unchanged."""
    if not _main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in signums if _replaceable(s)}
    for signum in previous:
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, handler_before in previous.items():
            signal.signal(signum, handler_before)


def signals_ignored(*signums: int) -> contextlib.AbstractContextManager:
    """Ignore the given signals in the block (a second Ctrl-C while the first one's checkpoint is written)."""
    return _handled_by(signums, signal.SIG_IGN)


class InterruptLatch:
    """Inside :meth:`holding`, a stop signal (Ctrl-C's SIGINT, SIGTERM, SIGHUP: errors.STOP_SIGNALS) only sets
    :attr:`pending` (and :attr:`signum`); the training loop acts on it at the end of a step, so an interrupt never
    falls between D's and G's updates, and under torchrun every rank stops at the same step (engine.Trainer.fit
    combines the flags with distributed.any_rank).  Outside the block the signals act as before."""

    def __init__(self) -> None:
        self.pending = False
        self.signum = int(signal.SIGINT)

    def _set(self, signum, frame) -> None:
        self.pending, self.signum = True, signum

    def holding(self) -> contextlib.AbstractContextManager:
        return _handled_by(STOP_SIGNALS, self._set)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {"key": state["state"]["key"].tolist(), "pos": state["state"]["pos"],
                  "has_gauss": state["has_gauss"], "gauss": state["gauss"]},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    numpy = state["numpy"]
    np.random.set_state(("MT19937", np.asarray(numpy["key"], dtype=np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def versions() -> dict:
    found = {"python": platform.python_version(), "torch": str(torch.__version__), "numpy": np.__version__}
    for package in ("torchvision", "opencv-python-headless", "scikit-learn"):
        try:
            found[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    return found
