"""Train with train.py's flags and write every step's losses to a JSON file: the check that a refactor changed
nothing (two commits, the same flags, byte-identical files).

    python tools/step_losses.py --out=losses.json                      (the toy run of the quick start)
    python tools/step_losses.py --out=a.json --dataset=ped2 --iters=50  (any train.py flag is accepted)

Compare with ``cmp a.json b.json``.  Set FFP_AUTOTUNE=off on both sides when the two runs may measure --amp=auto
differently (ffpvad/training/autotune.py): the flag rule then decides, the same way each time.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


from ffpvad.cli import parse_args
from ffpvad.training.engine import Trainer
from ffpvad.errors import run_cli
from ffpvad.ioutil import atomic_write_text


def main() -> int:
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--out", required=True, help="JSON file for the per-step losses")
    known, rest = extra.parse_known_args()
    cfg, _ = parse_args(rest, "tools/step_losses.py", __doc__)
    summary = Trainer(cfg, progress=False).fit()
    atomic_write_text(known.out, json.dumps([step.as_dict() for step in summary.history]) + "\n")
    print(f"{len(summary.history)} steps; best test micro AUC {100 * summary.best_auc:.2f}% at step "
          f"{summary.best_step}; losses in {known.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
