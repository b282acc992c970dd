"""The Adapt job: fit a model to one camera from its normal footage, then calibrate the causal threshold on it.

The three commands docs/detection.md gives for a new scene, as job stages:

1. ``tools/prepare_data.py custom``: the footage becomes a custom dataset under ``<state>/adapt/<name>/data``
   (the videos are linked, not copied, into ``<state>/adapt/<name>/src/training``);
2. ``train.py --dataset=custom``: from scratch at the CPU recipe's size (128 px, width 32, no flow loss), or
   fine-tuned from a chosen checkpoint (``--pretrained``: its weights, fresh optimisers, its image size and width),
   checkpoints in ``<weights>/adapted/<name>/``; stop and resume continue the run exactly (``--resume``);
3. ``detect.py --norm=causal --calibrate=<held-out video>``: the calibration file beside the new checkpoint, from
   normal footage the model did not train on: with two or more videos the last one (by name) is held out of
   training for it; with a single video the calibration uses the training video itself (optimistic: it flags
   fewer frames than ``--fpr`` promises on new footage, and the job's title says so).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

from ffpvad.webapp.files import cut_name
from ffpvad.webapp.jobs import Stage

CPU_SIZE = dict(img_size=128, base_channels=32)  # the ped2_cpu recipe's size and width (docs/results.md)


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() or target.is_symlink():
        target.unlink()
    try:
        os.symlink(source, target)
    except OSError:  # a file system without links
        shutil.copy2(source, target)


def adapt_plan(settings, name: str, footage: list[Path], base: Optional[Path], iters: int):
    """(stages, outputs, setup) of an adapt job for camera ``name`` on the ``footage`` videos.  ``setup`` lays
    out the footage; the job store runs it only once the job is sure to start (a refused request changes nothing)."""
    home = settings.state_dir / "adapt" / name
    src, data = home / "src", home / "data"
    weights = settings.weights_dir / "adapted" / name
    ordered = sorted(footage, key=lambda p: p.name)
    train_videos, held_out = (ordered[:-1], ordered[-1]) if len(ordered) > 1 else (ordered, ordered[0])

    def setup() -> None:
        for stale in (src / "training", data):  # an earlier footage set of this name must not train with it
            if stale.is_dir():
                shutil.rmtree(stale)
        for k, video in enumerate(train_videos):
            # cut: a 255-byte file name plus the number would be longer than the file system allows
            _link_or_copy(video, src / "training" / f"{k + 1:02d}_{cut_name(video.stem, 150)}{video.suffix}")

    size = dict(CPU_SIZE)
    if base is not None:
        from ffpvad.checkpoint import read_for_scoring  # torch: only when the job is set up
        _, cfg = read_for_scoring(base)
        size = dict(img_size=cfg.img_size, base_channels=cfg.base_channels, model=cfg.model)
    train = ["train.py", "--dataset=custom", f"--data_root={data}", f"--weights_dir={weights}",
             f"--iters={iters}", "--flownet=none", "--val_interval=0", "--val_holdout=0", "--tensorboard=false",
             f"--save_interval={max(1, min(500, iters // 4))}", f"--log_interval={max(1, min(50, iters // 20))}",
             f"--log_dir={home / 'logs'}",
             f"--cache_dir={home / 'cache'}", *[f"--{k}={v}" for k, v in size.items()]]
    if base is not None:
        train.append(f"--pretrained={base}")
    checkpoint = weights / "latest_custom.pth"
    run = f"{cut_name(held_out.stem, 100)}_adapted_{name}".replace("\\", "_")  # within detect.py's --run rules
    calibrate = ["detect.py", f"--video={held_out}", f"--trained_model={checkpoint}", "--norm=causal",
                 f"--calibrate={held_out}", f"--results_dir={settings.results_dir}", f"--run={run}",
                 "--progress=true"]
    stages = [Stage("prepare", ["tools/prepare_data.py", "custom", f"--src={src}", f"--data_root={data}"]),
              Stage("train", train), Stage("calibrate", calibrate)]
    outputs = {"checkpoint": str(checkpoint.relative_to(settings.weights_dir)), "run": run,
               "calibration": "held-out video " + held_out.name if len(ordered) > 1
               else "the training video itself (optimistic: add a second video to hold one out)"}
    return stages, outputs, setup
