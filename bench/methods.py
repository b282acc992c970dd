"""Cost of one training step of each method relative to FFP's, in the same run, through the shared Trainer.

    python bench/methods.py --img_size=128 --base_channels=32 --flownet=spynet --num_threads=2

Each variant trains on the toy data (resized to --img_size) with every other setting equal; the step is timed on one
fixed batch after warm-up (median of --repeats), so MAMA's cached flows / semantic maps are hits, as in every epoch
after the first; the first visit of a batch (cache misses: the frozen input networks run) is timed separately.
Variants: ffp (no flow loss), skipganomaly, f2lm (stage 1, motion from --flownet, no semantic stream unless
--semantic=deeplabv3) and f2lm --stage=destroyer (stage 2).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


from ffpvad.cli import resolve
from ffpvad.errors import run_cli


def time_steps(trainer, repeats: int) -> tuple[float, float]:
    """(first-visit seconds, median steady-state seconds) of one training step on a fixed batch."""
    ids, clips = trainer.next_clips()
    start = time.perf_counter()
    trainer.train_step(ids, clips)
    first = time.perf_counter() - start
    trainer.train_step(ids, clips)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        trainer.train_step(ids, clips)
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--img_size", type=int, default=128)
    parser.add_argument("--base_channels", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--flownet", default="spynet")
    parser.add_argument("--semantic", default="none")
    parser.add_argument("--num_threads", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--weights_dir", default="weights")
    args = parser.parse_args()
    import torch

    from ffpvad.checkpoint import save_checkpoint
    from ffpvad.training.engine import Trainer

    work = Path(tempfile.mkdtemp(prefix="bench_methods_"))
    common = dict(dataset="toy", img_size=args.img_size, base_channels=args.base_channels,
                  batch_size=args.batch_size, num_threads=args.num_threads, val_interval=0, save_interval=0,
                  tensorboard=False, data_root=str(work / "data"), cache_dir=str(work / "cache"),
                  weights_dir=args.weights_dir, iters=1)
    stage_one = str(work / "f2lm_stage1.pth")
    variants = [
        ("ffp (no flow loss)", dict(model="ffp", flownet="none")),
        ("skipganomaly", dict(model="skipganomaly")),
        (f"f2lm stage 1 (motion: {args.flownet}, semantic: {args.semantic})",
         dict(model="f2lm", flownet=args.flownet, semantic=args.semantic)),
        ("f2lm stage 2 (Destroyer)", dict(model="f2lm", flownet=args.flownet, semantic=args.semantic,
                                          stage="destroyer", pretrained=stage_one)),
    ]
    rows, baseline = [], None
    for name, flags in variants:
        if "skipganomaly" in name and args.img_size & (args.img_size - 1):
            continue  # its U-Net needs a power-of-two size
        trainer = Trainer(resolve({**common, **flags}), progress=False)
        if flags.get("stage") != "destroyer" and flags["model"] == "f2lm":
            save_checkpoint(stage_one, trainer.state())
        first, steady = time_steps(trainer, args.repeats)
        baseline = baseline or steady
        params = sum(p.numel() for p in trainer.generator.parameters() if p.requires_grad)
        rows.append((name, steady, steady / baseline, first, params))
        print(f"{name}: {steady:.3f} s/step ({steady / baseline:.2f}x ffp), first visit {first:.3f} s, "
              f"{params / 1e6:.2f} M trainable G parameters", flush=True)
    print(f"\n{args.img_size} px, width {args.base_channels}, batch {args.batch_size}, torch threads "
          f"{torch.get_num_threads()}")
    print("| variant | s/step | vs ffp | first visit (s) | trainable G params |")
    print("|---|---|---|---|---|")
    for name, steady, ratio, first, params in rows:
        print(f"| {name} | {steady:.3f} | {ratio:.2f}x | {first:.3f} | {params / 1e6:.2f} M |")
    return 0


if __name__ == "__main__":
    run_cli(main)
