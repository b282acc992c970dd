"""Validation curves of several training runs side by side, with their mean and spread per step.

    python tools/curve.py logs/ped2_cpu_seed1.log logs/ped2_cpu_seed2.log runs/ped2_cpu_seed3/train.log

Reads the lines train.py prints at each validation ("step N: test micro AUC X%" and "step N: held-out normal PSNR
X dB") from each log (tqdm's carriage returns are fine) and prints one row per step: every run's test micro AUC,
their mean and standard deviation (ddof 1), and, with --seconds_per_step, the training wall time that step
represents.  Where the curve flattens is where the mean stops rising by more than its spread.
"""
from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path


from ffpvad.errors import UserError, run_cli

AUC_LINE = re.compile(r"step (\d+): test micro AUC ([\d.]+)%")
PSNR_LINE = re.compile(r"step (\d+): held-out normal PSNR ([\d.]+) dB")


def read_curve(path: Path) -> tuple[dict[int, float], dict[int, float]]:
    """({step: test micro AUC %}, {step: held-out PSNR dB}) of one training log."""
    if not path.is_file():
        raise UserError(f"no training log at {path}")
    text = path.read_text(errors="replace").replace("\r", "\n")
    auc = {int(s): float(v) for s, v in AUC_LINE.findall(text)}
    held_out = {int(s): float(v) for s, v in PSNR_LINE.findall(text)}
    if not auc:
        raise UserError(f"{path} has no 'step N: test micro AUC' line: is it a train.py log with --val_interval?")
    return auc, held_out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logs", nargs="+", type=Path)
    parser.add_argument("--seconds_per_step", type=float, default=0.0, help="adds a training-minutes column")
    args = parser.parse_args()
    curves = [read_curve(p) for p in args.logs]
    steps = sorted(set.intersection(*(set(auc) for auc, _ in curves)))
    names = [p.parent.name if p.stem == "train" else p.stem for p in args.logs]  # runs/<run>/train.log
    header = ["step"] + (["train min"] if args.seconds_per_step else []) + names + ["mean", "sd"]
    print(" | ".join(header))
    for step in steps:
        values = [auc[step] for auc, _ in curves]
        sd = statistics.stdev(values) if len(values) > 1 else float("nan")
        minutes = [f"{step * args.seconds_per_step / 60:.1f}"] if args.seconds_per_step else []
        print(" | ".join([str(step)] + minutes + [f"{v:.2f}" for v in values] + [f"{statistics.mean(values):.2f}",
                                                                                 f"{sd:.2f}"]))
    for path, (auc, held_out) in zip(args.logs, curves):
        if held_out:
            pick = max(held_out, key=lambda s: (held_out[s], -s))  # the first step with the highest PSNR, as train.py
            print(f"{path}: label-free pick (held-out PSNR {held_out[pick]:.3f} dB) = step {pick}, test micro AUC "
                  f"{auc.get(pick, float('nan')):.2f}%; best on test {max(auc.values()):.2f}% at step "
                  f"{max(auc, key=auc.get)}")
    return 0


if __name__ == "__main__":
    run_cli(main)
