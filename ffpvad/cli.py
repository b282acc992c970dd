"""The command line of train.py and eval.py: the flags generated from config.Config, resolved with the settings
each method owns (ffpvad/methods/).  ffpvad/config.py knows no method; this module joins the two, so neither imports the other
back."""
from __future__ import annotations

from typing import Any, Sequence

from ffpvad import config
from ffpvad.config import Config, Flag, Parsed
from ffpvad.errors import UserError
from ffpvad.evaluation.scores import SCORES
from ffpvad.flow import FLOWNETS
from ffpvad.methods import METHODS, method_of, model_settings
from ffpvad.models import DISCRIMINATORS, GENERATORS
from ffpvad.models.semantic import SEMANTICS


def registry_names() -> dict[str, list[str]]:
    """The valid names of every setting that names a registry entry, read from the registries (so a new generator,
    flow estimator or score is in --help without an edit here)."""
    stages = sorted({stage for _, method in METHODS.items() for stage in method.stages})
    return {"model": GENERATORS.names(), "discriminator": DISCRIMINATORS.names(),
            "flownet": ["auto", *FLOWNETS.names()], "semantic": ["auto", *SEMANTICS.names()],
            "score": SCORES.names(), "stage": ["generator", *stages]}


def check_names(cfg: Config) -> Config:
    """Every setting that names a registry entry, checked against its registry before any work starts (an unknown
    --score was found at the first validation, after the training steps before it); one line each, listing the
    valid names.  Also the rules joining two of them: a --stage of the model's method, and a --score other than
    psnr only for a PSNR-scored method."""
    GENERATORS.get(cfg.model)
    DISCRIMINATORS.get(cfg.discriminator)
    if cfg.flownet != "auto":
        FLOWNETS.get(cfg.flownet)
    if cfg.semantic != "auto":
        SEMANTICS.get(cfg.semantic)
    SCORES.get(cfg.score)
    method = method_of(cfg)  # refuses a --stage the model's method does not have
    if cfg.score != "psnr" and not method.scores_by_psnr:
        raise UserError(f"--score={cfg.score} is a frame score of prediction methods (ffpvad/evaluation/scores.py); --model="
                        f"{cfg.model} has its own score: drop --score")
    return cfg


def resolve(given: dict[str, Any]) -> Config:
    """The config of the flags ``given`` ({field: value}): field defaults < dataset preset < method settings <
    recipe (--preset) < the flags themselves; its names checked against the registries."""
    return check_names(config.resolve(given, model_settings))


def parse_command_line(argv: Sequence[str] | None, prog: str, description: str,
                       extra: Sequence[Flag] = ()) -> Parsed:
    """Config from presets + --config + flags, the fields the user set explicitly, and the ``extra`` flags; its
    names checked against the registries."""
    parsed = config.parse_command_line(argv, prog, description, model_settings, extra, registry_names())
    check_names(parsed.config)
    return parsed


def parse_args(argv: Sequence[str] | None, prog: str, description: str) -> tuple[Config, set[str]]:
    """Config from presets + --config + flags, and the set of fields the user set explicitly, by a flag, through
    --preset or in the --config file (a resume keeps the others)."""
    cfg, explicit, _ = parse_command_line(argv, prog, description)
    return cfg, explicit
