"""The same-numbers check of a refactor: train, evaluate and detect on the toy set with one checkout's command lines
and write what came out as one JSON file (checkpoint SHA-256s, the AUC lines, per-frame PSNRs, detect's scores).

    python tools/same_numbers.py --repo=. --out=after.json
    git worktree add /tmp/before <old commit> && python tools/same_numbers.py --repo=/tmp/before --out=before.json
    cmp before.json after.json

It drives only ``train.py``, ``eval.py`` and ``detect.py`` through their flags, so it runs against a checkout from
before or after a move of the library.  Both runs must use the same --work folder: the checkpoint stores its
settings, paths included, so a different folder changes its bytes.  Torch-free (it hashes files).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

TRAIN_FLAGS = ["--dataset=toy", "--iters=40", "--val_interval=20", "--save_interval=20", "--img_size=32",
               "--base_channels=8", "--batch_size=4", "--device=cpu", "--tensorboard=false"]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(repo: Path, script: str, flags: list[str], env: dict) -> str:
    done = subprocess.run([sys.executable, script, *flags], cwd=repo, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"error: {script} failed in {repo} (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout


def _metric_lines(stdout: str) -> list[str]:
    """The metric lines, less their wall-clock times (which differ from run to run)."""
    return [re.sub(r" in [0-9.]+ ?(s|min)\b", "", line.strip()) for line in stdout.splitlines()
            if "AUC" in line or "EER" in line]


def _npz_digest(path: Path) -> dict:
    import numpy as np  # deferred: only the files' contents need it
    with np.load(path) as data:
        return {key: hashlib.sha256(np.ascontiguousarray(data[key]).tobytes()).hexdigest() for key in sorted(data)}


def same_numbers(repo: Path, work: Path) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    paths = [f"--data_root={work / 'data'}", f"--weights_dir={work / 'weights'}", f"--results_dir={work / 'results'}",
             f"--log_dir={work / 'tb'}", f"--cache_dir={work / 'cache'}"]
    env = {**os.environ, "FFP_AUTOTUNE": "off", "OMP_NUM_THREADS": "1"}
    out: dict = {}
    out["train"] = _metric_lines(_run(repo, "train.py", TRAIN_FLAGS + paths, env))
    out["checkpoints"] = {p.name: _sha256(p) for p in sorted((work / "weights").glob("*.pth"))}
    out["eval"] = _metric_lines(_run(repo, "eval.py", ["--dataset=toy", "--trained_model=latest_toy", "--device=cpu",
                                                       *paths], env))
    out["eval_scores"] = {str(p.relative_to(work)): _npz_digest(p) for p in sorted(work.glob("results/**/*.npz"))}
    video = work / "data" / "toy" / "testing" / "frames" / "01"
    _run(repo, "detect.py", [f"--video={video}", "--trained_model=latest_toy", "--device=cpu", *paths[1:3]], env)
    out["detect_scores"] = {str(p.relative_to(work)): _sha256(p) for p in sorted(work.glob("results/**/scores.csv"))}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", default=".", help="the checkout whose train.py, eval.py and detect.py run")
    parser.add_argument("--work", default="/tmp/ffp_same_numbers", help="scratch folder (wiped), the same for both")
    parser.add_argument("--out", required=True, help="JSON file of the numbers")
    args = parser.parse_args()
    found = same_numbers(Path(args.repo).resolve(), Path(args.work).resolve())
    Path(args.out).write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")
    print(f"{len(found['checkpoints'])} checkpoints, {len(found['eval_scores'])} score files; numbers in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
