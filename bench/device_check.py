"""The CUDA path in one command: every method, precision and layout trained on the GPU, exact resume, torchrun
(NCCL, and gloo with two processes on one GPU), eval.py and detect.py, speed at the paper's size, and a short Ped2
training, reported as one JSON and one Markdown table.

    python bench/device_check.py --device=cuda --out=OUT [--data_root=pack/data] [--budget_s=460]
    python bench/device_check.py --device=cpu --quick --out=OUT          # the same code on tiny sizes (CI)

Each section runs in turn, is timed, and is written to ``OUT/device_check.json`` and ``OUT/device_check.md`` as soon
as it ends, so a run cut off by its time limit still brings back what it did; a section that fails records its
one-line error and the next one runs.  ``--budget_s``: a section that would start with less than its expected time
left is skipped, saying so.  What each section checks:

- ``environment``: torch, CUDA and the device; the device's measured matrix-multiply rate per precision (the
  yardstick for the speed figures).
- ``methods``: every registered method (its first trainable generator; MAMA's Destroyer from an F2LM checkpoint of
  the same run) trained for ``--steps`` under ``--amp`` off, bf16 and fp16 and channels_last on and off: losses
  finite, and under fp16 on CUDA the loss scaler enabled with a finite scale.  FFP also with the flow loss through
  FlowNet2-SD and SPyNet (random weights written here when no file is given: the cost does not depend on them).
- ``resume``: N steps straight against N/2, a checkpoint and N/2 more, under deterministic settings
  (``torch.use_deterministic_algorithms``, ``CUBLAS_WORKSPACE_CONFIG``); the largest weight difference (0 = exact).
- ``distributed``: ``torchrun --nproc_per_node=1 train.py`` (NCCL on CUDA, gloo on the CPU) and ``torchrun
  --nproc_per_node=2 eval.py`` with ``FFP_DIST_BACKEND=gloo`` (two processes sharing the one GPU): its AUC equal to
  one process's.
- ``eval_detect``: eval.py and detect.py on the device (the marked video written and decoded); the AUC of the
  copy-last baseline on the device equal to the CPU's.
- ``speed``: training steps/s at 256 px, width 64, batch 4 (--quick: 32 px, width 8), with and without the
  FlowNet2-SD flow loss, evaluation frames/s and peak GPU memory, per precision (channels_last on).
- ``ped2`` (with --data_root holding ped2/): train.py at 256 px for ``--ped2_steps`` with the Ped2 preset (the
  paper's size, width, losses and learning rates) except two choices of ours: no flow loss (no real flow weights
  travel, and random ones would teach nothing) and the learning rate divided by 10 at 80% of the steps (the paper's
  7,000 is beyond a short run); validated every fifth of the steps with two held-out videos; its curve, the
  label-free pick (held-out PSNR) and the best on test, beside copy-last, all micro AUC on the test labels.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
# What the project's modules import at their top (and detect's video reader), checked before they are imported: on
# a lent machine that lacks one, the report says which to carry (tools/pack_device.py --wheels), not a traceback.
NEEDED = {"numpy": "numpy", "cv2": "opencv-python-headless", "av": "av", "tqdm": "tqdm", "sklearn": "scikit-learn",
          "scipy": "scipy", "einops": "einops", "tensorboardX": "tensorboardX"}


def missing_packages() -> list[str]:
    import importlib.util
    return [package for module, package in NEEDED.items() if importlib.util.find_spec(module) is None]


if __name__ == "__main__" and missing_packages():
    sys.exit(f"error: this machine lacks {', '.join(missing_packages())}: carry them as wheels "
             f"(tools/pack_device.py --wheels=...) and install them before the check")

from ffpvad.cli import resolve
from ffpvad.training.engine import Trainer, load_resume_state, stage_two_config
from ffpvad.methods import METHODS, first_stage, trainable_generator
from ffpvad.runtime import autocast
from ffpvad.data.toydata import ensure_toy_dataset
from ffpvad.data.video_io import count_frames

AMPS = ("off", "bf16", "fp16")
PROGRESS = re.compile(r"\d+/\d+ \[|\d+%\|")
LAYOUTS = ("off", "on")


# --- the report -----------------------------------------------------------------------------------------------

class Report:
    """Sections as they end, written at once (JSON and Markdown) so that a cut-off run keeps what it did."""

    def __init__(self, out: Path, settings: dict[str, Any]):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.data: dict[str, Any] = {"settings": settings, "sections": {}}
        self.write()

    def add(self, name: str, result: dict[str, Any]) -> None:
        self.data["sections"][name] = result
        self.write()

    def write(self) -> None:
        from ffpvad.ioutil import atomic_write_text
        atomic_write_text(self.out / "device_check.json", json.dumps(self.data, indent=1, default=str) + "\n")
        atomic_write_text(self.out / "device_check.md", self.markdown())

    def markdown(self) -> str:
        lines = ["# Device check", "", f"settings: `{json.dumps(self.data['settings'], default=str)}`", ""]
        for name, result in self.data["sections"].items():
            lines += [f"## {name}: {result.get('status')} ({result.get('seconds', 0):.0f} s)", ""]
            if result.get("error"):
                lines += [f"error: {result['error']}", ""]
            rows = result.get("rows") or []
            if rows:
                keys = list(dict.fromkeys(k for row in rows for k in row))
                lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
                lines += ["| " + " | ".join(_cell(row.get(k)) for k in keys) + " |" for row in rows]
                lines.append("")
            for key, value in result.items():
                if key not in ("rows", "status", "seconds", "error"):
                    lines.append(f"- {key}: {_cell(value)}")
            lines.append("")
        return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def run_section(report: Report, name: str, body: Callable[[], dict[str, Any]], deadline: float,
                needs_s: float) -> None:
    """Run one section unless less than ``needs_s`` of the budget is left; its error is one line in the report."""
    left = deadline - time.monotonic()
    if left < needs_s:
        report.add(name, {"status": "skipped", "seconds": 0.0,
                          "error": f"{left:.0f} s of --budget_s left, the section needs about {needs_s:.0f} s"})
        return
    start = time.monotonic()
    print(f"== {name} (about {needs_s:.0f} s)", flush=True)
    try:
        result = body()
        result.setdefault("status", "ok")
    except Exception as exc:  # a section's failure is its finding: reported, and the next section runs
        result = {"status": "failed", "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                  "traceback_tail": traceback.format_exc().strip().splitlines()[-3:]}
    result["seconds"] = time.monotonic() - start
    report.add(name, result)
    print(f"   {name}: {result['status']} in {result['seconds']:.0f} s", flush=True)


# --- shared set-up --------------------------------------------------------------------------------------------

class Setup:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = torch.device(args.device)
        self.work = args.out / "work"
        self.data_root = self.work / "data"
        ensure_toy_dataset(self.data_root)
        self.size = 32 if args.quick else 64
        self.width = 8 if args.quick else 32
        self.flow_weights = self._random_flow_weights()

    def base_config(self, model: str, name: str, **changes: Any):
        cfg = resolve({"dataset": "toy", "model": model, "semantic": "none", "flownet": "none"})
        settings = dict(data_root=str(self.data_root), cache_dir=str(self.work / "cache"),
                        weights_dir=str(self.work / "weights" / name), results_dir=str(self.work / "results"),
                        log_dir=str(self.work / "logs" / name), img_size=self.size, base_channels=self.width,
                        batch_size=4, val_interval=0, save_interval=0, log_interval=0, tensorboard=False,
                        device=self.args.device, iters=self.args.steps)
        return cfg.replace(**{**settings, **changes})  # a section's own settings win

    def _random_flow_weights(self) -> dict[str, Path]:
        """FlowNet2-SD (official layout) and SPyNet state dicts of random weights: their cost does not depend on
        the values, so the CUDA path of the flow loss runs without the real files."""
        from ffpvad.flow.flownet2sd import FlowNet2SD
        from ffpvad.flow.spynet import SpyNet

        folder = self.work / "flow"
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"flownet2sd": folder / "FlowNet2-SD_checkpoint.pth.tar", "spynet": folder / "spynet_random.pth"}
        torch.manual_seed(0)
        if not paths["flownet2sd"].exists():
            network = FlowNet2SD()
            for parameter in network.parameters():
                torch.nn.init.normal_(parameter, std=0.01)
            torch.save({"epoch": 0, "state_dict": network.state_dict(), "best_EPE": 1e10}, paths["flownet2sd"])
        if not paths["spynet"].exists():
            torch.save(SpyNet().state_dict(), paths["spynet"])
        return paths


def finite_losses(history) -> bool:
    return all(math.isfinite(v) for step in history for v in step.as_dict().values())


# --- sections -------------------------------------------------------------------------------------------------

def environment(setup: Setup) -> dict[str, Any]:
    device = setup.device
    info: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), bf16=torch.cuda.is_bf16_supported())
    else:
        info["cpu"] = platform.processor() or platform.machine()
    n = 512 if setup.args.quick else 8192
    rows = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(2):
            a @ b
        _sync(device)
        repeats = 3 if setup.args.quick else 20
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        _sync(device)
        seconds = (time.perf_counter() - start) / repeats
        rows.append({"matmul": f"{n}x{n} {str(dtype).replace('torch.', '')}", "TFLOP/s": 2 * n ** 3 / seconds / 1e12})
    info["rows"] = rows
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def methods(setup: Setup) -> dict[str, Any]:
    rows, failures = [], 0
    for name in METHODS.names():
        base, stage = first_stage(name)
        probe = setup.base_config("ffp", "probe")
        model = trainable_generator(base, probe)
        for amp in AMPS:
            for layout in LAYOUTS:
                tag = f"{name}-{amp}-{layout}"
                row = {"method": name, "model": model, "amp": amp, "channels_last": layout}
                try:
                    cfg = setup.base_config(model, tag, amp=amp, channels_last=layout)
                    if stage != "generator":
                        Trainer(cfg.replace(iters=1), progress=False).fit()
                        cfg = stage_two_config(cfg.replace(stage=stage, pretrained="latest_toy"),
                                               {"stage", "pretrained"})
                    row.update(_train(cfg))
                except Exception as exc:  # one cell's failure, the grid goes on
                    row.update(ok=False, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
                failures += not row.get("ok")
                rows.append(row)
    for flow in ("flownet2sd", "spynet"):
        row = {"method": "prediction", "model": "ffp", "amp": "bf16", "channels_last": "on", "flow": flow}
        try:
            cfg = setup.base_config("ffp", f"flow-{flow}", amp="bf16", channels_last="on", flownet=flow,
                                    flownet_weights=str(setup.flow_weights[flow]))
            row.update(_train(cfg))
        except Exception as exc:
            row.update(ok=False, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
        failures += not row.get("ok")
        rows.append(row)
    return {"status": "ok" if failures == 0 else f"{failures} failed", "rows": rows}


def _train(cfg) -> dict[str, Any]:
    trainer = Trainer(cfg, progress=False)
    summary = trainer.fit()
    result = {"steps": summary.step, "steps_per_s": summary.step / max(summary.seconds, 1e-9),
              "ok": finite_losses(summary.history) and summary.step == cfg.iters,
              "last_psnr": summary.history[-1].as_dict().get("psnr") if summary.history else None}
    if trainer.scaler_g.is_enabled():  # fp16 on CUDA: loss scaling must be active and finite
        scale = float(trainer.scaler_g.get_scale())
        result.update(loss_scale=scale)
        result["ok"] = result["ok"] and math.isfinite(scale) and scale > 0
    result["loss_scaling"] = trainer.scaler_g.is_enabled()
    if trainer.device.type == "cuda":
        result["peak_gib"] = torch.cuda.max_memory_allocated(trainer.device) / 2**30
        torch.cuda.reset_peak_memory_stats(trainer.device)
    return result


def resume(setup: Setup) -> dict[str, Any]:
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what deterministic cuBLAS needs
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        n = max(2, setup.args.steps // 2 * 2)
        rows = []
        for amp in ("off", "bf16"):
            cfg = setup.base_config("ffp", f"resume-{amp}", amp=amp, channels_last="on", iters=n)
            straight = Trainer(cfg, progress=False)
            straight.fit()
            weights = {k: v.detach().float().cpu().clone() for k, v in straight.generator.state_dict().items()}
            half = cfg.replace(weights_dir=cfg.weights_dir + "-split", iters=n // 2)
            Trainer(half, progress=False).fit()
            resumed_cfg, state = load_resume_state(half.replace(resume="latest_toy", iters=n), {"iters", "resume"})
            tail = Trainer(resumed_cfg, resume_from=state, progress=False)
            tail.fit()
            diff = max(float((v.detach().float().cpu() - weights[k]).abs().max())
                       for k, v in tail.generator.state_dict().items() if v.is_floating_point())
            rows.append({"amp": amp, "steps": n, "max_weight_difference": diff, "exact": diff == 0.0})
        exact = all(row["exact"] for row in rows)
        return {"status": "ok" if exact else "inexact", "rows": rows,
                "deterministic": "torch.use_deterministic_algorithms(warn_only), cudnn.benchmark off, "
                                 "CUBLAS_WORKSPACE_CONFIG=:4096:8"}
    finally:
        torch.use_deterministic_algorithms(False)


def _command(args: list[str], env: Optional[dict[str, str]] = None, timeout: float = 600) -> dict[str, Any]:
    """Run one of the project's command lines; its exit status, its time and its last lines."""
    start = time.monotonic()
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    lines = [line for line in (done.stdout + done.stderr).replace("\r", "\n").splitlines()
             if line.strip() and not PROGRESS.search(line)]  # tqdm's bars say nothing once the command ended
    tail = lines[-3:]
    return {"rc": done.returncode, "seconds": round(time.monotonic() - start, 1), "tail": " / ".join(tail)[-400:],
            "stdout": done.stdout}


def _toy_flags(setup: Setup, name: str) -> list[str]:
    work = setup.work
    return [f"--data_root={setup.data_root}", f"--cache_dir={work / 'cache'}", f"--weights_dir={work / 'weights' / name}",
            f"--log_dir={work / 'logs' / name}", f"--results_dir={work / 'results' / name}", "--dataset=toy",
            f"--img_size={setup.size}", f"--base_channels={setup.width}", f"--device={setup.args.device}",
            "--flownet=none"]


def _torchrun() -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def _auc_of(stdout: str) -> Optional[str]:
    for line in stdout.splitlines():
        if "micro AUC" in line:
            return line.strip()
    return None


def distributed_section(setup: Setup) -> dict[str, Any]:
    flags = _toy_flags(setup, "ddp")
    steps = f"--iters={max(2, setup.args.steps // 4)}"
    rows = []
    run = _command([*_torchrun(), "--nproc_per_node=1", "train.py", *flags, steps, "--tensorboard=false",
                    "--val_interval=0", "--save_interval=0"])
    rows.append({"what": f"torchrun 1 process train.py ({'NCCL' if setup.device.type == 'cuda' else 'gloo'})",
                 "rc": run["rc"], "seconds": run["seconds"], "tail": run["tail"][-160:]})
    checkpoint = setup.work / "weights" / "ddp" / "latest_toy.pth"
    one = _command([sys.executable, "eval.py", *flags, f"--trained_model={checkpoint}", "--plots=false"])
    two = _command([*_torchrun(), "--nproc_per_node=2", "eval.py", *flags, f"--trained_model={checkpoint}",
                    "--plots=false", f"--results_dir={setup.work / 'results' / 'ddp2'}"],
                   env={"FFP_DIST_BACKEND": "gloo", "OMP_NUM_THREADS": "1"})
    same = _auc_of(one["stdout"]) is not None and _auc_of(one["stdout"]) == _auc_of(two["stdout"])
    rows.append({"what": "eval.py, 1 process", "rc": one["rc"], "seconds": one["seconds"],
                 "tail": _auc_of(one["stdout"]) or one["tail"][-160:]})
    rows.append({"what": "torchrun 2 processes eval.py (gloo, sharing the device)", "rc": two["rc"],
                 "seconds": two["seconds"], "tail": _auc_of(two["stdout"]) or two["tail"][-160:]})
    ok = all(r["rc"] == 0 for r in rows) and same
    return {"status": "ok" if ok else "failed", "rows": rows, "same_auc_sharded": same}


def _write_video(path: Path, frames: int, size: int) -> Path:
    """A short synthetic mp4 (a disk walking over a textured background), written with PyAV."""
    import av
    import numpy as np
    from fractions import Fraction

    rng = np.random.default_rng(0)
    background = (90 + 40 * rng.random((size, size, 1))).repeat(3, axis=2)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=Fraction(10))
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for t in range(frames):
            frame = background.copy()
            x = 5 + (t * 2) % (size - 10)
            frame[size // 2 - 4:size // 2 + 4, x:x + 8] = 30
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame.astype(np.uint8), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def eval_and_detect(setup: Setup) -> dict[str, Any]:
    flags = _toy_flags(setup, "cli")
    rows = []
    train = _command([sys.executable, "train.py", *flags, f"--iters={max(2, setup.args.steps // 4)}",
                      "--tensorboard=false", "--val_interval=0", "--save_interval=0"])
    rows.append({"what": "train.py", "rc": train["rc"], "seconds": train["seconds"], "result": train["tail"][-120:]})
    checkpoint = setup.work / "weights" / "cli" / "latest_toy.pth"
    evaluated = _command([sys.executable, "eval.py", *flags, f"--trained_model={checkpoint}", "--plots=false"])
    rows.append({"what": "eval.py", "rc": evaluated["rc"], "seconds": evaluated["seconds"],
                 "result": _auc_of(evaluated["stdout"]) or evaluated["tail"][-160:]})
    baseline = {}
    for device in dict.fromkeys([setup.args.device, "cpu"]):
        base_flags = [f if not f.startswith("--device=") else f"--device={device}" for f in flags]
        run = _command([sys.executable, "eval.py", *base_flags, "--model=copylast", "--plots=false",
                        f"--results_dir={setup.work / 'results' / ('copylast-' + device)}"])
        baseline[device] = _auc_of(run["stdout"])
        rows.append({"what": f"eval.py --model=copylast on {device}", "rc": run["rc"], "seconds": run["seconds"],
                     "result": baseline[device] or run["tail"][-160:]})
    video = _write_video(setup.work / "clip.mp4", 24 if setup.args.quick else 120, 96)
    out = setup.work / "detect"
    detected = _command([sys.executable, "detect.py", f"--video={video}", f"--trained_model={checkpoint}",
                         f"--output={out}", f"--device={setup.args.device}", "--progress=false"])
    marked = out / "annotated.mp4"
    frames = count_frames(marked) if marked.exists() else 0
    rows.append({"what": "detect.py", "rc": detected["rc"], "seconds": detected["seconds"],
                 "result": f"annotated.mp4: {frames} frames" if frames else detected["tail"][-160:]})
    same = len(set(baseline.values())) == 1 and None not in baseline.values()
    ok = all(r["rc"] == 0 for r in rows) and frames > 0 and same
    return {"status": "ok" if ok else "failed", "rows": rows, "copylast_same_on_cpu": same}


def speed(setup: Setup) -> dict[str, Any]:
    """Training steps/s (median-free: the mean over ``timed`` steps after ``warm`` of warm-up), evaluation frames/s
    and peak device memory of FFP at 256 px, width 64, batch 4 (--quick: 32 px, width 8), with and without the
    FlowNet2-SD flow loss, per precision, channels_last on; against the device's matmul rate of ``environment``."""
    size, width = (32, 8) if setup.args.quick else (256, 64)
    warm, timed = (1, 2) if setup.args.quick else (5, 30)
    rows = []
    amps = ("off", "bf16") if setup.args.quick else AMPS  # fp16 on a CPU is emulated (slow); methods covers it
    for flow in ("none", "flownet2sd"):
        for amp in amps:
            row: dict[str, Any] = {"flow": flow, "amp": amp, "img_size": size, "width": width, "batch": 4}
            try:
                extra = {"flownet": flow, "flownet_weights": str(setup.flow_weights[flow])} if flow != "none" else {}
                cfg = setup.base_config("ffp", f"speed-{flow}-{amp}", amp=amp, channels_last="on", img_size=size,
                                        base_channels=width, **extra)
                row.update(_time_training(cfg, warm, timed))
            except Exception as exc:  # e.g. out of memory: the row says so, the others run
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            rows.append(row)
    failed = sum("error" in row for row in rows)
    return {"status": "ok" if failed == 0 else f"{failed} failed", "rows": rows}


def _time_training(cfg, warm: int, timed: int) -> dict[str, Any]:
    trainer = Trainer(cfg, progress=False)
    device = trainer.device
    for _ in range(warm):
        trainer.train_step(*trainer.next_clips())
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(timed):
        trainer.train_step(*trainer.next_clips())
    _sync(device)
    steps_per_s = timed / (time.perf_counter() - start)
    result = {"steps_per_s": steps_per_s}
    if device.type == "cuda":
        result["train_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    generator = trainer.eval_generator.eval()
    batch = 4 * cfg.eval_batch_size if cfg.eval_batch_size else 32
    x = torch.randn(batch, 3 * cfg.n_inputs, cfg.img_size, cfg.img_size, device=device)
    x = x.to(memory_format=torch.channels_last) if trainer.channels_last else x
    with torch.no_grad(), autocast(device, trainer.amp_dtype):
        for _ in range(warm):
            generator(x)
        _sync(device)
        start = time.perf_counter()
        for _ in range(timed):
            generator(x)
        _sync(device)
    result["eval_frames_per_s"] = batch * timed / (time.perf_counter() - start)
    return result


def ped2(setup: Setup) -> dict[str, Any]:
    root = Path(setup.args.data_root)
    steps = setup.args.ped2_steps
    work = setup.work / "ped2"
    flags = ["--dataset=ped2", f"--data_root={root}", f"--cache_dir={work / 'cache'}", f"--weights_dir={work / 'w'}",
             f"--log_dir={work / 'logs'}", f"--results_dir={work / 'results'}", "--img_size=256",
             f"--device={setup.args.device}", "--flownet=none", f"--iters={steps}",
             f"--val_interval={max(1, steps // 5)}", f"--save_interval={max(1, steps // 5)}", "--val_holdout=2",
             "--tensorboard=false", f"--lr_decay_step={int(steps * 0.8)}"]
    trained = _command([sys.executable, "train.py", *flags], timeout=max(60, setup.args.budget_s))
    rows = [{"what": f"train.py ped2 256 px, {steps} steps", "rc": trained["rc"], "seconds": trained["seconds"],
             "result": trained["tail"][-200:]}]
    from ffpvad.training.runlog import CurveLog
    curve = {}
    for line in CurveLog.read_lines(work / "logs" / "ped2_bs4" / "curves.csv"):
        step, name, value = line.strip().split(",")
        if name in ("test_auc", "holdout_psnr"):
            curve.setdefault(int(step), {})[name] = float(value)
    for name in ("g_best_val_ped2", "g_best_auc_ped2"):
        run = _command([sys.executable, "eval.py", *flags, f"--trained_model={work / 'w' / (name + '.pth')}",
                        "--plots=false"])
        rows.append({"what": f"eval.py {name}", "rc": run["rc"], "seconds": run["seconds"],
                     "result": _auc_of(run["stdout"]) or run["tail"][-160:]})
    base = _command([sys.executable, "eval.py", *flags, "--model=copylast", "--plots=false"])
    rows.append({"what": "copy-last baseline", "rc": base["rc"], "seconds": base["seconds"],
                 "result": _auc_of(base["stdout"]) or base["tail"][-160:]})
    return {"status": "ok" if all(r["rc"] == 0 for r in rows) else "failed", "rows": rows, "curve": curve}


# --- the command line -----------------------------------------------------------------------------------------

def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/device_check.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and a few steps (the CI's CPU run)")
    parser.add_argument("--steps", type=int, default=0, help="training steps per cell (default 100, quick 2)")
    parser.add_argument("--data_root", default="", help="a folder holding ped2/ (prepared): runs the ped2 section")
    parser.add_argument("--ped2_steps", type=int, default=2000)
    parser.add_argument("--budget_s", type=float, default=460.0, help="stop starting sections after this long")
    parser.add_argument("--sections", default="environment,methods,resume,distributed,eval_detect,speed,ped2")
    args = parser.parse_args(argv)
    args.steps = args.steps or (2 if args.quick else 100)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("error: --device=cuda but CUDA is not available here: run with --device=cpu --quick")
    deadline = time.monotonic() + args.budget_s
    report = Report(args.out, {k: str(v) for k, v in vars(args).items()})
    setup = Setup(args)
    wanted = args.sections.split(",")
    plan = [("environment", lambda: environment(setup), 5),
            ("methods", lambda: methods(setup), 10 if args.quick else 120),
            ("resume", lambda: resume(setup), 5 if args.quick else 30),
            ("distributed", lambda: distributed_section(setup), 30 if args.quick else 60),
            ("eval_detect", lambda: eval_and_detect(setup), 30 if args.quick else 60)]
    plan.append(("speed", lambda: speed(setup), 10 if args.quick else 90))
    if args.data_root and (Path(args.data_root) / "ped2").is_dir() and not args.quick:
        plan.append(("ped2", lambda: ped2(setup), 120))
    for name, body, needs in plan:
        if name in wanted:
            run_section(report, name, body, deadline, needs)
    shutil.rmtree(setup.work / "cache", ignore_errors=True)
    statuses = {name: s["status"] for name, s in report.data["sections"].items()}
    print(f"wrote {args.out / 'device_check.json'} and device_check.md: {statuses}")
    return 0 if all(s in ("ok", "skipped") for s in statuses.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
