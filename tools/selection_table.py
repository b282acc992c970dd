"""Which checkpoint each selection rule picks, and its test AUC, from the training curves of finished runs.

    python tools/selection_table.py --group="ped2_cpu 1,500 steps=runs/s50,runs/s1,runs/s2" \\
        --group="+ --pseudo_anomaly=skip=runs/pa_s50,runs/pa_s1,runs/pa_s2"

Each run folder is one ``tools/ped2_cpu.py --out`` (or any train.py run whose ``curves.csv`` sits under it); its
curves hold, at every validation, the held-out PSNR, the pseudo-anomaly AUC and gap (``--val_pseudo``) and the test
micro AUC.  A rule picks the first validation step with the best value of its figure, as train.py does when it
keeps ``g_best_val`` / ``g_best_pseudo`` / ``g_best_auc``; the table shows the test micro AUC at that step (mean +- sd
over the group's runs, ddof 1) and the steps picked.  "best on test" is the oracle that uses test labels, there only
as the ceiling; "last" is the final step.  The test AUC of a step is the one train.py computed at that validation
(the same evaluation as eval.py).  Where the run folder has tools/ped2_cpu.py's ``summary.json``, the macro AUC and
EER of eval.py on the checkpoint that rule saved (held-out PSNR: ``g_best_val``, best on test: ``g_best_auc``)
are shown too.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import score_table  # (tools/, beside this file: its mean ± sd cell)
from ffpvad.training.runlog import CurveLog
from ffpvad.errors import UserError, run_cli

RULES = {  # rule -> the curve it maximises (None: the last validation)
    "held-out PSNR": "holdout_psnr", "pseudo AUC (skip)": "pseudo_auc", "pseudo gap (skip_gap)": "pseudo_gap_db",
    "last": None, "best on test (oracle)": "test_auc",
}


def read_curves(run: Path) -> dict[str, dict[int, float]]:
    """name -> {step: value} of the run's curves.csv (the one file under ``run``; a row cut short is skipped)."""
    found = sorted(run.rglob("curves.csv"))
    if len(found) != 1:
        raise UserError(f"{run}: expected one curves.csv under it, found {len(found)}: pass a run folder")
    curves: dict[str, dict[int, float]] = {}
    for line in CurveLog.read_lines(found[0]):
        step, name, value = line.rstrip("\n").split(",")
        curves.setdefault(name, {})[int(step)] = float(value)
    return curves


def pick(curves: dict[str, dict[int, float]], figure: str | None) -> int | None:
    """The first validation step with the best value of ``figure`` (the last validation for None); only steps
    whose test AUC was logged count."""
    validated = curves.get("test_auc", {})
    if figure is None:
        return max(validated) if validated else None
    values = {step: value for step, value in curves.get(figure, {}).items() if step in validated}
    if not values:  # a figure the run did not log, or a run still under way
        return None
    best = max(values.values())
    return min(step for step, value in values.items() if value == best)


SUMMARY_KEYS = {"held-out PSNR": "label_free", "best on test (oracle)": "best_on_test"}  # ped2_cpu.py's evals


def evaluated(run: Path, rule: str) -> dict | None:
    """eval.py's figures of the checkpoint ``rule`` saved in ``run``, from tools/ped2_cpu.py's summary.json."""
    path = run / "summary.json"
    if rule not in SUMMARY_KEYS or not path.is_file():
        return None
    return json.loads(path.read_text()).get(SUMMARY_KEYS[rule])


def cell(values: list[float]) -> str:
    return score_table.cell(values) if values else "-"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--group", action="append", default=[], help="label=run_folder,run_folder,...")
    args = p.parse_args()
    if not args.group:
        raise UserError("pass at least one --group=label=run_folder,...")
    print("| runs | rule | test micro AUC | steps picked | macro AUC (eval.py) | EER (eval.py) |")
    print("|---|---|---|---|---|---|")
    for group in args.group:
        label, _, paths = group.rpartition("=")
        runs = [Path(x.strip()) for x in paths.split(",") if x.strip()]
        all_curves = [read_curves(run) for run in runs]
        for rule, figure in RULES.items():
            steps = [pick(curves, figure) for curves in all_curves]
            if any(step is None for step in steps):
                continue  # a figure these runs did not log (no --val_holdout / --val_pseudo)
            aucs = [curves["test_auc"][step] for curves, step in zip(all_curves, steps)]
            evals = [evaluated(run, rule) for run in runs]
            macro = cell([e["macro_auc"] for e in evals]) if all(evals) else "-"
            eer = cell([e["eer"] for e in evals]) if all(evals) else "-"
            print(f"| {label} | {rule} | {cell(aucs)} | {', '.join(map(str, steps))} | {macro} | {eer} |")
    return 0


if __name__ == "__main__":
    run_cli(main)
