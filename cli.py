"""The command line of train.py and eval.py: the flags generated from config.Config, resolved with the settings
each method owns (methods/).  config.py knows no method; this module joins the two, so neither imports the other
back."""
from __future__ import annotations

from typing import Any, Sequence

import config
from config import Config, Flag, Parsed
from methods import model_settings


def resolve(given: dict[str, Any]) -> Config:
    """The config of the flags ``given`` ({field: value}): field defaults < dataset preset < method settings <
    recipe (--preset) < the flags themselves."""
    return config.resolve(given, model_settings)


def parse_command_line(argv: Sequence[str] | None, prog: str, description: str,
                       extra: Sequence[Flag] = ()) -> Parsed:
    """Config from presets + --config + flags, the fields the user set explicitly, and the ``extra`` flags."""
    return config.parse_command_line(argv, prog, description, model_settings, extra)


def parse_args(argv: Sequence[str] | None, prog: str, description: str) -> tuple[Config, set[str]]:
    """Config from presets + --config + flags, and the set of fields the user set explicitly, by a flag, through
    --preset or in the --config file (a resume keeps the others)."""
    cfg, explicit, _ = parse_command_line(argv, prog, description)
    return cfg, explicit
