"""Measured ``--amp=auto`` and ``--channels_last=auto`` on the CPU: the fastest of fp32/bf16 x NCHW/NHWC, timed.

A CPU flag cannot say what is fast: on an AMD EPYC with native bf16, bf16 + NHWC trains 2.9x faster than plain
fp32, while an Intel Xeon that reports AVX512-BF16 ran bf16 slower than fp32, and fp32 + NHWC was its fastest
setting (docs/speed.md).  So on first use on a machine, ``auto`` times the candidates on the run's own generator and
discriminator, at its image size, width and batch (a forward and backward pass of both for training, the
generator's forward pass for evaluation and detection), for a bounded time, and keeps the fastest.  Plain fp32
NCHW is kept unless a candidate beats it by more than :data:`MARGIN` (the noise of repeated timings), so the default
is never slower than plain fp32 by more than the noise.  bf16 is a candidate only where oneDNN reports native bf16
(emulated bf16 is always slow).

The verdict is cached in a small JSON file (``$FFP_CACHE_DIR`` or ``~/.cache/ffp-vad/autotune.json``), keyed by the
CPU model, the thread count, the torch version, the purpose, the model and the sizes, written atomically; a corrupt
file is ignored and rebuilt.  One line says what was chosen and by how much.  A flag given explicitly
(``--amp=bf16``, ``--channels_last=off``) is used as given and only the other one, if ``auto``, is measured.  On
CUDA ``auto`` keeps its fixed rule (bf16 where supported, else fp16; NHWC), and ``FFP_AUTOTUNE=off`` restores the
flag rule on the CPU too (the test suite uses it, so that its numbers do not depend on timings).  The evaluation
batch (``--eval_batch_size=0`` on the CPU) is chosen the same way, after the precision (:func:`inference_batch`).
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from ffpvad.training import distributed
from ffpvad.config import Config
from ffpvad.ioutil import atomic_write_text
from ffpvad.runtime import autocast, cpu_busy, cpu_has_fast_bf16, eval_batch_size, resolve_amp, use_channels_last

MARGIN = 1.05  # a candidate must beat plain fp32 NCHW by more than 5% (the spread of repeated timings)
BUDGET_S = 6.0  # timing budget per choice, warm-up included (more only when one pass is slower than this)
CACHE_ENV, SWITCH_ENV = "FFP_CACHE_DIR", "FFP_AUTOTUNE"
BATCH_CANDIDATES = (1, 2, 4, 8)  # evaluation batches timed on the CPU (4 is the default: bench/speed.py)
Candidate = tuple[Optional[torch.dtype], bool]  # (autocast dtype or None for fp32, channels_last)


def cpu_model() -> str:
    """The processor's model name (Linux /proc/cpuinfo; else what the platform module knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_key() -> str:
    """What a cached verdict holds for: this CPU, thread count and torch version."""
    return f"{cpu_model()}|threads={torch.get_num_threads()}|torch={torch.__version__}"


def cache_path() -> Path:
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ffp-vad"
    return Path(root) / "autotune.json"


def describe(candidate: Candidate) -> str:
    dtype, nhwc = candidate
    name = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
    return f"{name} + {'NHWC' if nhwc else 'NCHW'}"


def _load_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        print(f"note: the autotune cache {path} is unreadable: measuring again and rewriting it")
        return {}
    return data if isinstance(data, dict) else {}


def _store(path: Path, cache: dict) -> None:
    try:
        atomic_write_text(path, json.dumps(cache, indent=1, sort_keys=True) + "\n")
    except OSError as exc:  # a read-only home folder costs a measurement next time, nothing more
        print(f"note: cannot write the autotune cache {path} ({exc.strerror or exc}): the choice is not kept")


def candidates(cfg: Config) -> list[Candidate]:
    """The settings to time, plain fp32 NCHW first, restricted by the flags given explicitly."""
    dtypes = {"off": [None], "bf16": [torch.bfloat16], "fp16": [torch.float16],
              "auto": [None, torch.bfloat16] if cpu_has_fast_bf16() else [None]}[cfg.amp]
    layouts = {"off": [False], "on": [True], "auto": [False, True]}[cfg.channels_last]
    return [(dtype, nhwc) for dtype in dtypes for nhwc in layouts]


def time_candidate(step: Callable[[Candidate], None], candidate: Candidate, deadline: float) -> float:
    """Median seconds of ``step(candidate)`` after one warm-up call, repeated while the budget lasts (at least 2)."""
    step(candidate)
    times: list[float] = []
    while len(times) < 2 or (len(times) < 5 and time.perf_counter() < deadline):
        start = time.perf_counter()
        step(candidate)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def training_step(generator: nn.Module, discriminator: nn.Module, inputs: torch.Tensor, predict) -> Callable:
    """One forward and backward pass of G and D on ``inputs`` under a candidate's precision and layout."""
    def step(candidate: Candidate) -> None:
        dtype, nhwc = candidate
        fmt = torch.channels_last if nhwc else torch.contiguous_format
        generator.to(memory_format=fmt)
        discriminator.to(memory_format=fmt)
        x = inputs.contiguous(memory_format=fmt)
        with autocast(torch.device("cpu"), dtype):
            output = predict(generator, x)[0]
            judged = discriminator(output)
        judged = judged[0] if isinstance(judged, tuple) else judged
        (output.float().mean() + judged.float().mean()).backward()
        generator.zero_grad(set_to_none=True)
        discriminator.zero_grad(set_to_none=True)
    return step


def inference_step(generator: nn.Module, inputs: torch.Tensor, predict) -> Callable:
    @torch.inference_mode()
    def step(candidate: Candidate) -> None:
        dtype, nhwc = candidate
        fmt = torch.channels_last if nhwc else torch.contiguous_format
        generator.to(memory_format=fmt)
        with autocast(torch.device("cpu"), dtype):
            predict(generator, inputs.contiguous(memory_format=fmt))
    return step


def choose(cfg: Config, purpose: str, key_extra: str, make_step: Callable[[], Callable[[Candidate], None]],
           say: Callable[[str], None] = print) -> Candidate:
    """The fastest candidate for this purpose ('train' or 'eval') on this CPU: cached, or measured now."""
    options = candidates(cfg)
    if len(options) == 1:
        return options[0]
    key = "|".join([machine_key(), purpose,
                    f"amp={cfg.amp}", f"channels_last={cfg.channels_last}", key_extra])
    path = cache_path()
    cache = _load_cache(path)
    verdict = cache.get(key)
    if (isinstance(verdict, dict) and verdict.get("choice") in [describe(c) for c in options]
            and isinstance(verdict.get("ratio"), (int, float))):
        chosen = next(c for c in options if describe(c) == verdict["choice"])
        say(f"auto: {describe(chosen)} for {purpose} (measured on this machine before: {verdict['ratio']:.2f}x plain "
            f"fp32 NCHW; {path})")
        return chosen
    load = cpu_busy()
    if load is not None:  # timings taken beside other work would be kept as this machine's verdict
        fallback = resolve_amp(cfg, torch.device("cpu")), use_channels_last(cfg, torch.device("cpu"))
        say(f"auto: the CPU is busy (other processes use {load:.1f} cores), so nothing is measured now: "
            f"{describe(fallback)} by the flag rule for {purpose}; the measurement runs on a quieter start")
        return fallback
    with torch.random.fork_rng(devices=[]):  # the measurement draws no number the run would have drawn
        step = make_step()
        deadline = time.perf_counter() + BUDGET_S
        seconds = {c: time_candidate(step, c, deadline) for c in options}
    plain = seconds[options[0]]
    chosen = min(options, key=lambda c: seconds[c])
    if seconds[chosen] * MARGIN > plain:
        chosen = options[0]
    ratio = plain / seconds[chosen]
    cache[key] = {"choice": describe(chosen), "ratio": round(ratio, 3),
                  "seconds": {describe(c): round(s, 5) for c, s in seconds.items()}}
    _store(path, cache)
    timings = ", ".join(f"{describe(c)} {1000 * s:.0f} ms" for c, s in seconds.items())
    say(f"auto: {describe(chosen)} for {purpose}, {ratio:.2f}x plain fp32 NCHW ({timings}; measured once on "
        f"{cpu_model()}, kept in {path})")
    return chosen


def enabled(device: torch.device, cfg: Config) -> bool:
    """Whether ``auto`` is measured here: on the CPU of a single-process run, unless FFP_AUTOTUNE=off, when a flag
    is still auto.  (Under torchrun every process must take the same setting: the flag rule decides there.)"""
    return measuring_allowed(device) and "auto" in (cfg.amp, cfg.channels_last)


def measuring_allowed(device: torch.device) -> bool:
    """On the CPU of a single-process run, unless FFP_AUTOTUNE=off: where a measured choice may be made."""
    return (device.type == "cpu" and not distributed.launched()
            and os.environ.get(SWITCH_ENV, "on").lower() not in ("0", "off", "false", "no"))


def sample_inputs(cfg: Config, method, batch: int) -> torch.Tensor:
    """Random generator inputs of the run's shape (what ``method.split`` makes of a clip), in [-1, 1]."""
    clip = torch.rand(batch, cfg.clip_len, 3, cfg.img_size, cfg.img_size) * 2 - 1
    return method.split(clip)[0]


def resolve_compute(cfg: Config, device: torch.device, purpose: str, method, make_step: Callable[[], Callable],
                    batch: int, say: Callable[[str], None] = print) -> Candidate:
    """(autocast dtype or None, channels_last) for this run: measured where :func:`enabled`, else the flag rule
    (runtime.resolve_amp, runtime.use_channels_last)."""
    if not enabled(device, cfg):
        return resolve_amp(cfg, device), use_channels_last(cfg, device)
    extra = (f"model={cfg.model}|method={method.name}|discriminator={cfg.discriminator}|flownet={cfg.flownet}|"
             f"semantic={cfg.semantic}|width={cfg.base_channels}|size={cfg.img_size}|batch={batch}|clip={cfg.clip_len}")
    return choose(cfg, purpose, extra, make_step, say)


def inference_compute(cfg: Config, device: torch.device, method, generator: nn.Module, batch: int,
                      say: Callable[[str], None] = print) -> Candidate:
    """:func:`resolve_compute` for evaluation and detection: the generator's forward pass on ``batch`` frames
    (the generator is in eval mode and nothing it holds changes)."""
    generator.eval()
    return resolve_compute(cfg, device, "evaluation", method,
                           lambda: inference_step(generator, sample_inputs(cfg, method, batch), method.predict),
                           batch, say)


def inference_batch(cfg: Config, device: torch.device, method, generator: nn.Module, compute: Candidate,
                    say: Callable[[str], None] = print) -> int:
    """Frames per evaluation batch: ``--eval_batch_size`` when given, on CUDA and where nothing is measured
    (:func:`runtime.eval_batch_size`); else (``0`` on the CPU) the fastest per frame of :data:`BATCH_CANDIDATES`
    under the chosen precision and layout, timed once and cached like the precision.  The default batch is kept
    unless another is faster by more than :data:`MARGIN`.  Frames of a batch do not interact (BatchNorm in eval
    mode), so the batch changes the speed, not the scores (beyond floating-point rounding)."""
    default = eval_batch_size(cfg, device)
    if cfg.eval_batch_size or not measuring_allowed(device):
        return default
    key = "|".join([machine_key(), "evaluation batch", describe(compute), f"model={cfg.model}",
                    f"method={method.name}", f"width={cfg.base_channels}", f"size={cfg.img_size}",
                    f"clip={cfg.clip_len}"])
    path = cache_path()
    cache = _load_cache(path)
    verdict = cache.get(key)
    if isinstance(verdict, dict) and verdict.get("batch") in BATCH_CANDIDATES:
        return verdict["batch"]
    if cpu_busy() is not None:  # the precision's measurement already said why nothing is measured now
        return default
    generator.eval()
    per_frame = {}
    with torch.random.fork_rng(devices=[]):
        for batch in BATCH_CANDIDATES:  # each its share of the budget: the last ones are not left two timings
            step = inference_step(generator, sample_inputs(cfg, method, batch), method.predict)
            deadline = time.perf_counter() + BUDGET_S / len(BATCH_CANDIDATES)
            per_frame[batch] = time_candidate(step, compute, deadline) / batch
    chosen = min(per_frame, key=per_frame.get)
    if per_frame[chosen] * MARGIN > per_frame[default]:
        chosen = default
    cache[key] = {"batch": chosen, "frames_per_s": {str(b): round(1 / s, 2) for b, s in per_frame.items()}}
    _store(path, cache)
    rates = ", ".join(f"{b}: {1 / s:.1f}" for b, s in per_frame.items())
    say(f"auto: evaluation batch {chosen} ({rates} frames/s by batch; measured once, kept in {path})")
    return chosen


def inference_settings(cfg: Config, device: torch.device, method, generator: nn.Module,
                       say: Callable[[str], None] = print) -> tuple[Config, Optional[torch.dtype], bool]:
    """(config with its evaluation batch decided, autocast dtype, channels_last) for evaluation and detection:
    the precision and layout (:func:`inference_compute`), then the batch (:func:`inference_batch`)."""
    dtype, nhwc = inference_compute(cfg, device, method, generator, eval_batch_size(cfg, device), say)
    batch = inference_batch(cfg, device, method, generator, (dtype, nhwc), say)
    return cfg.replace(eval_batch_size=batch), dtype, nhwc


def compute_record(candidate: Candidate) -> dict:
    """What a checkpoint keeps of the precision and layout its run trained with."""
    dtype, nhwc = candidate
    return {"amp": {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32"), "channels_last": bool(nhwc)}


def resumed_compute(cfg: Config, device: torch.device, record: Optional[dict]) -> Optional[Candidate]:
    """The precision and layout a resumed CPU run trained with (its checkpoint's record), for the flags still
    ``auto``; None where there is no record or nothing would be measured anyway."""
    if not record or not enabled(device, cfg):
        return None
    dtype = ({"bf16": torch.bfloat16, "fp16": torch.float16}.get(record.get("amp"))
             if cfg.amp == "auto" else resolve_amp(cfg, device))
    nhwc = bool(record.get("channels_last")) if cfg.channels_last == "auto" else cfg.channels_last == "on"
    return dtype, nhwc
