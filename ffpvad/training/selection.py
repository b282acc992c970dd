"""Checkpoint selection as data: each rule that keeps a run's best checkpoint, with its statistic and file name.

A training run keeps ``latest`` and, per rule, the checkpoint of the validation where the rule's statistic was
highest so far.  The official FFP rule (``g_best_auc``) looks at the test labels; the label-free rules
(``--val_holdout``'s ``g_best_val``, ``--val_pseudo``'s ``g_best_pseudo``) do not (docs/evaluation.md).  A results
table states the rule beside every AUC: :func:`describe` gives it from a checkpoint's name.  Torch-free.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Rule:
    kind: str  # the checkpoint it keeps, weights/<kind>_<dataset>.pth (a method may rename it: MAMA's a_best_auc)
    statistic: str  # what it maximises, as the end-of-run line names it
    shown: str  # how that line writes the value (a format string)
    value_key: str  # the checkpoint's record of the best value ...
    step_key: str  # ... and of its step (both read on resume)
    describes: str  # the selection rule, as results tables state it
    variant: str = ""  # a Config field naming which statistic (--val_pseudo): another one's best does not compare
    variant_default: str = ""  # the variant of a checkpoint written before the variant was recorded
    old_value_keys: tuple[str, ...] = ()  # earlier names of value_key, read on resume

    @property
    def variant_key(self) -> str:
        return f"{self.value_key}_rule"


RULES = (
    Rule("g_best_auc", "test micro AUC", "{:.2%}", "best_auc", "best_step", "best on test (looks at the test labels)"),
    Rule("g_best_val", "held-out PSNR", "{:.3f} dB", "best_val_psnr", "best_val_step",
         "held-out PSNR (no test labels)"),
    Rule("g_best_pseudo", "pseudo-anomaly statistic", "{:.4g}", "best_pseudo", "best_pseudo_step",
         "pseudo-anomaly AUC on held-out videos (no test labels)", variant="val_pseudo", variant_default="skip",
         old_value_keys=("best_pseudo_auc",)),
)
RULE = {rule.kind: rule for rule in RULES}


@dataclass
class Best:
    """The best value of one rule so far, and its step (-1: no validation yet)."""
    rule: Rule
    value: float = -math.inf
    step: int = -1

    def improves(self, value: float, step: int) -> bool:
        """Take ``value`` of ``step`` when it beats the best so far (its checkpoint is then to be written)."""
        if value > self.value:
            self.value, self.step = value, step
            return True
        return False

    def record(self, cfg: Any) -> dict[str, Any]:
        """What a checkpoint keeps of it."""
        rule = self.rule
        variant = {rule.variant_key: getattr(cfg, rule.variant)} if rule.variant else {}
        return {rule.value_key: self.value, rule.step_key: self.step, **variant}

    def restore(self, state: dict[str, Any], cfg: Any) -> None:
        """The best of a resumed checkpoint, unless it was of another variant (an AUC and a gap do not compare)."""
        rule = self.rule
        if rule.variant and state.get(rule.variant_key, rule.variant_default) != getattr(cfg, rule.variant):
            return
        value = next((state[k] for k in (rule.value_key, *rule.old_value_keys) if k in state), -math.inf)
        self.value, self.step = value, state.get(rule.step_key, -1)

    def line(self, path: Path) -> str:
        """'best <statistic> <value> at step N (<path>)' for the end of the run."""
        return f"best {self.rule.statistic} {self.rule.shown.format(self.value)} at step {self.step} ({path})"


def fresh() -> dict[str, Best]:
    """Every rule's best, before any validation."""
    return {rule.kind: Best(rule) for rule in RULES}


def describe(checkpoint: Path | str) -> str:
    """How the run chose this checkpoint, from its name (what results tables must state beside an AUC)."""
    stem = Path(checkpoint).stem
    for rule in RULES:
        if stem.startswith(rule.kind):
            return rule.describes
    if stem.startswith("latest"):
        return "last checkpoint"
    return f"as named ({stem})"
