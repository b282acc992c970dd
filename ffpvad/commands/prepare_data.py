"""Prepare a benchmark (or your own videos) from the files you downloaded, offline, into the layout train.py reads.

    python tools/prepare_data.py ped2     --src UCSD_Anomaly_Dataset.tar.gz   --data_root data
    python tools/prepare_data.py ped1     --src UCSD_Anomaly_Dataset.v1p2     --data_root data
    python tools/prepare_data.py avenue   --src "Avenue Dataset" --src ground_truth_demo --data_root data
    python tools/prepare_data.py shanghai --src shanghaitech                  --data_root data
    python tools/prepare_data.py custom   --src my_cameras                    --data_root data

Writes <data_root>/<dataset>/{training,testing}/frames/<video>/000.jpg ..., the labels (<dataset>/<dataset>.mat, or
ShanghaiTech's testing/test_frame_mask/) and the pixel masks (testing/pixel_masks/<video>.npy).  Safe to interrupt
and run again: finished videos are kept, the rest is redone.  The source is only ever read: a --data_root inside a
--src is refused, and so is a --src already in this layout (it needs no preparation: point --data_root at the folder
above it).  See docs/data.md 'Preparing a dataset' and ffpvad/data/preparation/.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence


import cv2

from ffpvad.config import OneLineParser  # (one-line errors for bad flags, as train.py / eval.py)
from ffpvad.errors import UserError, run_cli
from ffpvad.data.preparation import PLANNERS, Options, prepare


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="prepare_data.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("dataset", metavar="{" + ",".join(PLANNERS.names()) + "}",
                        help="the dataset's planner (ffpvad/data/preparation/; shanghaitech = shanghai)")
    parser.add_argument("--src", action="append", required=True, metavar="PATH",
                        help="what you downloaded: a folder or a .tar/.tar.gz/.zip (repeat for several, e.g. "
                             "Avenue's videos and its ground_truth_demo)")
    parser.add_argument("--data_root", default="data", help="where the prepared dataset goes (default: data)")
    parser.add_argument("--labels", default="", metavar="FILE",
                        help="frame labels replacing the dataset's own: an ano_pred .mat (e.g. avenue.mat), an MNAD "
                             ".npy, or (custom) an interval .csv/.txt")
    parser.add_argument("--labels_only", action="store_true",
                        help="write only the labels and pixel masks (frames already prepared, or not available)")
    parser.add_argument("--image_format", choices=("jpg", "png"), default="jpg",
                        help="frame format (default jpg, the public prepared layout)")
    parser.add_argument("--jpeg_quality", type=int, default=95, help="JPEG quality 1-100 (default 95)")
    parser.add_argument("--link", choices=("auto", "copy", "hardlink", "symlink"), default="auto",
                        help="how ShanghaiTech's test JPEGs are placed: auto = hard link, else copy (default)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="videos prepared at once (default: 2, or 1 on a 1-core machine)")
    parser.add_argument("--keep_extracted", action="store_true",
                        help="keep the extracted copy of an archive source (in <data_root>/.prepare/)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 1 <= args.jpeg_quality <= 100:
        raise UserError(f"--jpeg_quality must be between 1 and 100, got {args.jpeg_quality}")
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    cv2.setNumThreads(1)  # parallelism is across videos; OpenCV's own threads would only compete
    opts = Options(data_root=Path(args.data_root), image_format=args.image_format, jpeg_quality=args.jpeg_quality,
                   link=args.link, workers=args.workers, labels=Path(args.labels) if args.labels else None,
                   labels_only=args.labels_only, keep_extracted=args.keep_extracted,
                   progress=not args.no_progress)
    summary = prepare(args.dataset, [Path(s) for s in args.src], opts)
    print("\n".join(summary.lines()))
    if summary.label_file is not None:
        print(f"next: python train.py --dataset={summary.dataset} --data_root={args.data_root}  and  "
              f"python eval.py --dataset={summary.dataset} --data_root={args.data_root} --trained_model=...")
    return 0


def cli() -> None:
    """The console script."""
    run_cli(main)


if __name__ == "__main__":
    cli()
