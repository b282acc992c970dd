"""Every frame score (ffpvad/evaluation/scores.py) on the same predictions: one table row per checkpoint group and score.

    python tools/score_table.py --dataset=ped2 --data_root=../shared/data --baseline=copylast \\
        --group="ped2_cpu, held-out PSNR=runs/s50/g_best_val_ped2.pth,runs/s1/g_best_val_ped2.pth" \\
        --scores=psnr,box16,box32,top5,top1,moving

Runs ``eval.py --score=<score>`` on each checkpoint of each ``--group`` ("label=path,path,..."; several paths are
seeds: mean +- sd, ddof 1) and, with ``--baseline``, on the parameter-free baseline scored the same way, and prints
micro AUC, macro AUC and EER as a markdown table.  Per-video min-max normalisation (the FFP protocol) unless
``--score_norm=global``.  Results go to --results_dir (one folder per checkpoint and score).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from ffpvad.errors import UserError, run_cli
from ffpvad.evaluation.scores import SCORES


def evaluate(common: list[str], extra: list[str], results: Path) -> dict:
    done = subprocess.run([sys.executable, str(ROOT / "eval.py"), *common, *extra, f"--results_dir={results}",
                           "--plots=false"], capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise UserError(f"eval.py {' '.join(extra)} failed: {done.stderr.strip().splitlines()[-1]}")
    folder = next(line.split("wrote ", 1)[1].strip().rstrip("/") for line in done.stdout.splitlines()
                  if line.startswith("wrote "))
    return json.loads((Path(folder) / "metrics.json").read_text())


def cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f}%"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}%"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True)
    p.add_argument("--data_root", default="data")
    p.add_argument("--group", action="append", default=[], help="label=checkpoint,checkpoint,...")
    p.add_argument("--baseline", default="", help="a parameter-free --model scored the same way (copylast)")
    p.add_argument("--baseline_size", type=int, default=0, help="the baseline's --img_size (default: the preset's)")
    p.add_argument("--scores", default=",".join(SCORES.names()))
    p.add_argument("--score_norm", default="video", choices=("video", "global"))
    p.add_argument("--results_dir", default="results/score_table")
    p.add_argument("--num_threads", type=int, default=0, help="eval.py's torch threads (1 beside a training run)")
    args = p.parse_args()
    scores = [s.strip() for s in args.scores.split(",") if s.strip()]
    for name in scores:
        SCORES.get(name)
    common = [f"--dataset={args.dataset}", f"--data_root={args.data_root}", f"--score_norm={args.score_norm}",
              f"--num_threads={args.num_threads}"]
    rows = []
    groups = []
    if args.baseline:
        groups.append((f"{args.baseline} (no training)", [None]))
    for spec in args.group:
        label, _, paths = spec.rpartition("=")
        if not paths:
            raise UserError(f"--group={spec}: write label=checkpoint[,checkpoint...]")
        groups.append((label.strip(), [x.strip() for x in paths.split(",") if x.strip()]))
    for label, paths in groups:
        for score in scores:
            found = []
            for k, path in enumerate(paths):
                extra = [f"--score={score}"]
                if path is None:
                    extra += [f"--model={args.baseline}"] + ([f"--img_size={args.baseline_size}"]
                                                             if args.baseline_size else [])
                else:
                    extra += [f"--trained_model={path}"]
                found.append(evaluate(common, extra, Path(args.results_dir) / f"g{len(rows)}_{k}"))
                print(f"  {label} / {score} / {path or 'baseline'}: micro {100 * found[-1]['micro_auc']:.2f}%",
                      file=sys.stderr, flush=True)
            rows.append((label, score, len(paths), cell([m["micro_auc"] for m in found]),
                         cell([m["macro_auc"] for m in found]), cell([m["eer"] for m in found])))
    print("| checkpoints | score | runs | micro AUC | macro AUC | EER |\n|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(str(x) for x in row) + " |")
    return 0


if __name__ == "__main__":
    run_cli(main)
