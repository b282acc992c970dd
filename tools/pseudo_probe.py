"""How separable the pseudo-anomalies of ffpvad/data/pseudo.py are for given checkpoints: a probe for choosing them.

    python tools/pseudo_probe.py --data_root=../shared/data R13/weights/g_best_pseudo_ped2.pth \
        R13/weights/latest_ped2.pth

For each checkpoint, on its own held-out training videos (``--val_holdout`` of its config; never a test frame): the
mean score of the normal frames, and for each skip in --skips the pseudo-anomaly AUC (what ``--val_pseudo`` keeps)
and the mean gap in dB between normal and pseudo-anomalous frames.  A selection statistic is useful only if it
orders checkpoints; an AUC that is 100% for all of them cannot.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


from ffpvad.data import pseudo
from ffpvad.checkpoint import load_networks, read_for_scoring
from ffpvad.data.dataset import VideoSet
from ffpvad.training.engine import split_holdout
from ffpvad.errors import UserError, run_cli
from ffpvad.evaluation.evaluate import predict_psnr
from ffpvad.inference import Inference
from ffpvad.runtime import resolve_amp, use_channels_last


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--data_root", default="")
    p.add_argument("--skips", default="2,3")
    args = p.parse_args()
    skips = [int(s) for s in args.skips.split(",")]
    device = torch.device("cpu")
    print("| checkpoint | step | held-out normal (dB) | " + " | ".join(
        f"skip {s}: AUC, gap (dB)" for s in skips) + " |")
    print("|---|---|---|" + "---|" * len(skips))
    for path in args.checkpoints:
        state, cfg = read_for_scoring(path)
        cfg = cfg.replace(**({"data_root": args.data_root} if args.data_root else {}))
        if not cfg.val_holdout:
            raise UserError(f"{path} was trained without --val_holdout: it has no held-out videos to probe with")
        generator, _ = load_networks(path, state, cfg)
        cfg = cfg.replace(device="cpu")
        ctx = Inference.set_up(cfg, generator, compute=(resolve_amp(cfg, device), use_channels_last(cfg, device)))
        _, holdout = split_holdout(VideoSet.load(cfg, "training"), cfg.val_holdout)

        def predict(videos: VideoSet) -> list[np.ndarray]:
            return predict_psnr(ctx, videos, progress=False)

        normal = predict(holdout)
        cells = []
        for skip in skips:
            figures = pseudo.pseudo_figures(normal, predict, holdout, skip)
            cells.append(f"{100 * figures['auc']:.2f}%, {figures['gap_db']:.2f}")
        print(f"| {Path(path).name} | {state.get('step')} | {np.mean(np.concatenate(normal)):.2f} | "
              + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    run_cli(main)
