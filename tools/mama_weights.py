"""MAMA's score weights searched ON THE TEST LABELS, as the authors do: an optimistic number, printed as such.

    python tools/mama_weights.py results/a_best_auc_ped2          (the folder eval.py wrote, or its scores.npz)

The authors' grid (docs/methods.md 'MAMA: authors' code'): motion a + label b + generator c = 5 in steps of 0.1,
Destroyer
d in {0.25, 0.5, 0.75, 1}; terms absent from the run (no semantic stream, stage 1 only) are left out.  ``--gaussian``
adds their gaussian_filter1d(sigma=10) after the per-video min-max (in their README, not in the paper).  The
fixed-weight AUC (``--score_weights`` of the evaluation, no test labels used) is printed beside the tuned one; report
both.
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np


from ffpvad.errors import UserError, run_cli
from ffpvad.losses.mama import SCORE_TERMS, combined_score
from ffpvad.evaluation.metrics import minmax


def split_videos(values: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    return np.split(values, np.cumsum(lengths)[:-1])


def score_auc(terms: dict[str, list[np.ndarray]], labels: np.ndarray, weights, gaussian: bool) -> float:
    from scipy.ndimage import gaussian_filter1d
    from sklearn.metrics import roc_auc_score

    n_videos = len(next(iter(terms.values())))
    scores = []
    for v in range(n_videos):
        s = minmax(combined_score({k: t[v] for k, t in terms.items()}, weights))
        scores.append(gaussian_filter1d(s, sigma=10) if gaussian else s)
    return float(roc_auc_score(labels, np.concatenate(scores)))


def grid(present: set[str]):
    """The authors' grid over the weights of the terms present (absent ones fixed at 0)."""
    steps = np.round(np.arange(0, 5.0001, 0.1), 1)
    ds = (0.25, 0.5, 0.75, 1.0) if "destroyer_mse" in present else (0.0,)
    for a, b in itertools.product(steps, steps):
        c = round(5 - a - b, 1)
        if c < 0 or (a and "motion_triplet" not in present) or (b and "label_triplet" not in present):
            continue
        for d in ds:
            yield (float(a), float(b), float(c), d)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="eval.py's results folder of a MAMA checkpoint, or its scores.npz")
    parser.add_argument("--gaussian", action="store_true", help="smooth each video's score (sigma 10 frames)")
    args = parser.parse_args()
    path = args.results / "scores.npz" if args.results.is_dir() else args.results
    if not path.is_file():
        raise UserError(f"{path} not found: run eval.py on a MAMA checkpoint (--model=f2lm) first")
    data = np.load(path)
    present = {k for k in SCORE_TERMS if k in data.files}
    if "generator_mse" not in present:
        raise UserError(f"{path} has no MAMA score terms (generator_mse, ...): it is not from a --model=f2lm "
                        f"checkpoint")
    lengths, labels = data["video_lengths"], data["label"].astype(int)
    terms = {k: split_videos(data[k], lengths) for k in present}
    from sklearn.metrics import roc_auc_score
    fixed = float(roc_auc_score(labels, data["score"]))
    print(f"terms: {', '.join(k for k in SCORE_TERMS if k in present)}; {len(lengths)} videos, {len(labels)} frames")
    print(f"fixed weights (eval.py --score_weights, no test labels): micro AUC {100 * fixed:.2f}%")
    best, best_weights, tried = -1.0, None, 0
    for weights in grid(present):
        auc = score_auc(terms, labels, weights, args.gaussian)
        tried += 1
        if auc > best:
            best, best_weights = auc, weights
    a, b, c, d = best_weights
    smoothing = ", gaussian sigma 10" if args.gaussian else ""
    print(f"TUNED ON THE TEST LABELS ({tried} weightings{smoothing}): micro AUC {100 * best:.2f}% at motion {a:g}, "
          f"label {b:g}, generator {c:g}, destroyer {d:g}  <- optimistic: not a detector's accuracy")
    return 0


if __name__ == "__main__":
    run_cli(main)
