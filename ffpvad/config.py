"""One frozen configuration for training and evaluation, its per-dataset presets and its command line.

Every setting is a field of :class:`Config`, and the field carries what the command line and the rest of the code
need to know about it as metadata (:func:`setting`): its help group, its help text, its valid choices or numeric
range, and the kinds of setting it belongs to (:func:`fields_of`: the fields that define a trained network, the ones
MAMA's second stage takes from the first, the ones eval.py may change).  The flags of ``train.py`` and ``eval.py``,
their ``--help`` and their validation are generated from it, so a new setting is one new field here.

Precedence: field default < dataset preset < model preset < recipe (--preset) < a saved run's config
(--config=<config.json>) < flags given on the command line (and, when resuming, < the stored config of the
checkpoint for the fields not given again).

Published FFP settings (Liu et al., CVPR 2018; the authors' ``training_hyper_params/hyper_params.ini``):
intensity (L2) weight 1 (Avenue: 0.001), gradient weight 1, flow weight 2, adversarial weight 0.05; Adam with
learning rates 1e-4 / 1e-5 (G / D) on the grey datasets and 2e-4 / 2e-5 on the colour ones, each divided by 10
after 7,000 (Ped2), 100,000 (Avenue) or 50,000 (ShanghaiTech) steps; clips of 4 input frames + 1 target at 256x256.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

from ffpvad.errors import UserError
from ffpvad.ioutil import atomic_write_text
from ffpvad.registry import Registry

DATASET_ALIASES = {"shanghaitech": "shanghai"}

# The help groups of the settings, in the order --help lists them.
GROUPS = ("data", "networks", "optimisation", "run control", "compute", "evaluation")
# The kinds a setting may belong to (its metadata's "kinds"; fields_of lists the members of one).
KINDS = {
    "architecture": "defines the networks and the data they were trained on: a resumed run cannot change it",
    "stage_one": "MAMA's Destroyer stage takes it from its stage-1 checkpoint unless it is given again",
    "eval_override": "may differ from the checkpoint's config at evaluation time (data location, hardware, outputs)",
}


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric setting: bounds (None = unbounded), each closed or open, an optional step, and
    a note for the message.  A float must also be finite, whatever its bounds."""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    multiple_of: int = 1
    note: str = ""

    def contains(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return self.multiple_of == 1 or value % self.multiple_of == 0

    def describe(self, kind: type = float, note: bool = True) -> str:
        """'a finite number > 0', 'an integer in [0, 1]', ...: what a valid value is (and the note, if ``note``)."""
        text = "an integer" if kind is int else "a finite number"
        if self.low is not None and self.high is not None:
            text += (f" in {'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}"
                     f"{')' if self.high_open else ']'}")
        elif self.low is not None:
            text += f" {'>' if self.low_open else '>='} {_number(self.low)}"
        elif self.high is not None:
            text += f" {'<' if self.high_open else '<='} {_number(self.high)}"
        if self.multiple_of != 1:
            text += f", a multiple of {self.multiple_of}"
        return text + (f" ({self.note})" if self.note and note else "")


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)
ANY_NUMBER = Range()


def setting(default: Any, group: str, help: str, *, choices: Sequence[str] = (), range: Range | None = None,
            numbers: int = 0, kinds: Iterable[str] = ()) -> Any:
    """A Config field with its metadata: help ``group`` (one of GROUPS), ``help`` text, valid ``choices`` or numeric
    ``range`` (numbers without one need only be finite), for a text of ``numbers`` comma-separated numbers (each in
    ``range``) their count, and the ``kinds`` (KINDS) it belongs to."""
    if group not in GROUPS or not set(kinds) <= set(KINDS):
        raise ValueError(f"unknown group {group!r} or kinds {sorted(set(kinds) - set(KINDS))}")
    metadata: dict[str, Any] = dict(group=group, help=help, kinds=frozenset(kinds))
    if choices:
        metadata["choices"] = tuple(choices)
    if range is not None:
        metadata["range"] = range
    if numbers:
        metadata["numbers"] = numbers
    return field(default=default, metadata=metadata)


_ARCH, _STAGE1, _EVAL = "architecture", "stage_one", "eval_override"


@dataclass(frozen=True)
class Config:
    # --- data -------------------------------------------------------------------------------------------------
    dataset: str = setting(
        "toy", "data", "a dataset preset (config.PRESETS; shanghaitech = shanghai)",
        kinds={_ARCH, _EVAL})
    preset: str = setting(
        "", "data", "a named recipe over the dataset preset (config.RECIPES); empty = none")
    data_root: str = setting(
        "data", "data", "folder holding <dataset>/{training,testing}/frames/<video>/<frame>.jpg", kinds={_EVAL})
    labels: str = setting(
        "", "data", "label file or folder; empty = look beside the dataset (see dataset.find_label_source)",
        kinds={_EVAL})
    cache_dir: str = setting(
        "cache", "data", "decoded, resized uint8 frames are kept here (one .npy per video)", kinds={_EVAL})
    img_size: int = setting(
        256, "data", "frames are resized to img_size x img_size",
        range=Range(8, multiple_of=8, note="the U-Net halves it three times"), kinds={_ARCH, _STAGE1})
    clip_len: int = setting(
        5, "data", "frames per clip: clip_len-1 input frames + 1 predicted frame (5: 4 + 1)", range=AT_LEAST_ONE,
        kinds={_ARCH, _STAGE1})
    # --- networks ---------------------------------------------------------------------------------------------
    model: str = setting(
        "ffp", "networks", "generator (ffpvad/models/); it also picks the method that trains and scores it "
        "(ffpvad/methods/)",
        kinds={_ARCH})
    base_channels: int = setting(
        64, "networks", "width of the first U-Net stage (64 in the paper)", range=AT_LEAST_ONE,
        kinds={_ARCH, _STAGE1})
    discriminator: str = setting(
        "pixel", "networks",
        "discriminator (ffpvad/models/; each method's settings pick its own)", kinds={_ARCH, _STAGE1})
    flownet: str = setting(
        "none", "networks", "flow estimator (ffpvad/flow/; auto: the best whose weights are here)",
        kinds={_ARCH, _STAGE1})
    flownet_weights: str = setting(
        "", "networks", "weights file of the flow network; empty = the usual places in weights/", kinds={_STAGE1})
    semantic: str = setting(
        "auto", "networks", "frozen segmentation network of a generator with a semantic input "
        "(ffpvad/models/semantic.py; auto: deeplabv3 when its weights are here)", kinds={_ARCH, _STAGE1})
    stage: str = setting(
        "generator", "networks", "the training stage: generator (the first), or a later stage of the model's "
        "method (ffpvad/methods/: Method.stages), which starts from --pretrained", kinds={_ARCH})
    # --- optimisation -----------------------------------------------------------------------------------------
    iters: int = setting(80000, "optimisation", "training steps", range=AT_LEAST_ONE)
    batch_size: int = setting(
        4, "optimisation", "training clips per step (per process under torchrun)", range=AT_LEAST_ONE)
    lr_g: float = setting(1e-4, "optimisation", "Adam learning rate of the generator G", range=POSITIVE)
    lr_d: float = setting(1e-5, "optimisation", "Adam learning rate of the discriminator D", range=POSITIVE)
    lr_decay_step: int = setting(
        7000, "optimisation", "both learning rates are multiplied by lr_decay_gamma at this step",
        range=NON_NEGATIVE)
    lr_decay_gamma: float = setting(
        0.1, "optimisation", "factor of both learning rates at lr_decay_step (1 = no decay)", range=POSITIVE)
    adam_beta1: float = setting(
        0.9, "optimisation", "Adam's first beta for G and D (Skip-GANomaly: 0.5)",
        range=Range(0, 1, low_open=True, high_open=True))
    weight_decay: float = setting(
        0.0, "optimisation", "decoupled weight decay (AdamW) of G and D; 0 = plain Adam (MAMA: 1e-4)",
        range=NON_NEGATIVE)
    lam_int: float = setting(1.0, "optimisation", "weight of the intensity (L2) loss", range=NON_NEGATIVE)
    lam_grad: float = setting(1.0, "optimisation", "weight of the gradient loss", range=NON_NEGATIVE)
    lam_flow: float = setting(
        2.0, "optimisation", "weight of the optical-flow loss (needs a flow network, --flownet)",
        range=NON_NEGATIVE)
    lam_adv: float = setting(0.05, "optimisation", "weight of G's adversarial loss", range=NON_NEGATIVE)
    pseudo_anomaly: str = setting(
        "", "optimisation", "train with pseudo-anomalies too (skip: clips of every 3rd training frame, on which G "
        "is taught to predict the last input frame, not the fast motion; ffpvad/data/pseudo.py); empty = off",
        choices=("", "skip"))
    lam_pseudo: float = setting(
        1.0, "optimisation", "weight of the pseudo-anomaly loss (--pseudo_anomaly)", range=NON_NEGATIVE)
    flow_loss_scale: float = setting(
        20.0, "optimisation", "flows enter the flow loss divided by this (FlowNet's native output unit)",
        range=POSITIVE)
    lam_con: float = setting(
        50.0, "optimisation", "Skip-GANomaly: weight of the contextual (L1 reconstruction) loss",
        range=NON_NEGATIVE)
    lam_lat: float = setting(
        1.0, "optimisation", "Skip-GANomaly: weight of the latent loss (L2 between D's features of real and fake)",
        range=NON_NEGATIVE)
    lam_triplet: float = setting(
        1.0, "optimisation", "MAMA: weight of the two triplet losses (motion and label)", range=NON_NEGATIVE)
    triplet_margin: float = setting(
        0.2, "optimisation", "MAMA: margin of the triplet losses", range=NON_NEGATIVE, kinds={_STAGE1})
    d_reinit_below: float = setting(
        0.0, "optimisation",
        "re-initialise D when its loss falls below this (Skip-GANomaly: 1e-5; 0 = never)", range=NON_NEGATIVE)
    manualseed: int = setting(
        50, "optimisation", "seed of Python's, NumPy's and torch's random generators",
        range=Range(0, 2**64 - 1))
    ema: float = setting(
        0.0, "optimisation",
        "decay of an exponential moving average of G's weights, which validation, checkpoints and eval.py then use "
        "(0 = off; 0.999 averages over about the last 1,000 steps)",
        range=Range(0, 1, high_open=True, note="0 = off, e.g. 0.999"), kinds={_ARCH})
    # --- run control ------------------------------------------------------------------------------------------
    save_interval: int = setting(
        10000, "run control", "steps between saves of the resumable checkpoint latest_<dataset> (0 = at the end "
        "only)", range=Range(0, note="0 disables it"))
    val_interval: int = setting(
        1000, "run control", "steps between validations, which keep the best checkpoints (0 = none)",
        range=Range(0, note="0 disables it"))
    log_interval: int = setting(
        20, "run control", "steps between logs of the losses (0 = none)", range=Range(0, note="0 disables it"))
    val_holdout: int = setting(
        0, "run control",
        "training videos (the last N by name) kept out of training; every validation scores their mean PSNR and "
        "keeps weights/g_best_val_<dataset>.pth: selection without test labels",
        range=Range(0, note="0 = off"), kinds={_ARCH})
    val_pseudo: str = setting(
        "", "run control", "with --val_holdout: at every validation also score the held-out clips against "
        "pseudo-anomalous versions of them (every 3rd frame, motion too fast; ffpvad/data/pseudo.py) and keep "
        "weights/g_best_pseudo_<dataset>.pth by skip: their AUC, or skip_gap: the mean PSNR gap in dB; "
        "another selection without test labels", choices=("", "skip", "skip_gap"))
    resume: str = setting(
        "", "run control", "checkpoint name in weights/ (latest_ped2) or a path: continue that run exactly")
    trained_model: str = setting(
        "", "run control", "eval.py: checkpoint name in weights/ (g_best_auc_ped2) or a path")
    pretrained: str = setting(
        "", "run control",
        "train.py: initialise G and D from this checkpoint (another dataset), fresh optimizers")
    weights_dir: str = setting(
        "weights", "run control", "folder of the checkpoints (written by train.py, read by eval.py)", kinds={_EVAL})
    results_dir: str = setting(
        "results", "run control", "eval.py writes <results_dir>/<run>/ here", kinds={_EVAL})
    log_dir: str = setting(
        "tensorboard_log", "run control", "tensorboard logs and the run's config.json go to <log_dir>/<run>/")
    tensorboard: bool = setting(True, "run control", "write tensorboard logs (and config.json) to log_dir")
    # --- compute ----------------------------------------------------------------------------------------------
    device: str = setting("auto", "compute", "auto (cuda when available), cpu, cuda, cuda:1", kinds={_EVAL})
    amp: str = setting(
        "auto", "compute", "autocast precision (auto: see engine.resolve_amp)",
        choices=("auto", "off", "bf16", "fp16"), kinds={_EVAL})
    channels_last: str = setting(
        "auto", "compute", "NHWC memory format for the convolutions", choices=("auto", "on", "off"), kinds={_EVAL})
    eval_batch_size: int = setting(
        0, "compute", "frames per evaluation batch; 0 = 4 on the CPU (fastest in bench/speed.py), 32 on CUDA",
        range=Range(0, note="0 = automatic"), kinds={_EVAL})
    num_threads: int = setting(
        0, "compute", "torch CPU threads; 0 = torch's default", range=Range(0, note="0 = torch's default"),
        kinds={_EVAL})
    # --- evaluation -------------------------------------------------------------------------------------------
    macro_single_class: str = setting(
        "exclude", "evaluation", "how videos with one class enter the macro AUC", choices=("exclude", "pad"),
        kinds={_EVAL})
    score_norm: str = setting(
        "video", "evaluation", "min-max the anomaly score per video (FFP protocol) or over the test set",
        choices=("video", "global"), kinds={_EVAL})
    score: str = setting(
        "psnr", "evaluation", "frame score of a PSNR-scored method (ffpvad/evaluation/scores.py; psnr: the paper's)",
        kinds={_EVAL})
    score_lambda: float = setting(
        0.9, "evaluation",
        "Skip-GANomaly: score = lambda * reconstruction error + (1 - lambda) * latent error",
        range=Range(0, 1), kinds={_EVAL})
    score_weights: str = setting(
        "1,1,1,1", "evaluation",
        "MAMA: weights of the z-scored motion triplet, label triplet, generator error and Destroyer error (fixed; "
        "tools/mama_weights.py searches them on test labels)", numbers=4, range=NON_NEGATIVE, kinds={_EVAL})
    plots: bool = setting(True, "evaluation", "eval.py: write ROC and per-video score plots", kinds={_EVAL})

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)

    @property
    def n_inputs(self) -> int:
        return self.clip_len - 1


_TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool}


def field_type(f: dataclasses.Field) -> type:
    """int, float, str or bool: the type of a Config field (its annotation is a string here)."""
    return _TYPES[f.type if isinstance(f.type, str) else f.type.__name__]


def fields_of(kind: str) -> tuple[str, ...]:
    """The names of the fields of one kind (KINDS: architecture, stage_one, eval_override), in field order."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind of setting {kind!r}: one of {', '.join(KINDS)}")
    return tuple(f.name for f in fields(Config) if kind in f.metadata["kinds"])


# Presets hold only what differs from the field defaults.
_GREY = dict(lr_g=1e-4, lr_d=1e-5)
_COLOUR = dict(lr_g=2e-4, lr_d=2e-5)
PRESETS: Registry[dict[str, Any]] = Registry.of("--dataset", {
    # flownet=auto: FlowNet2-SD (the paper's) when its weights are present, else SPyNet, else no flow loss, said
    # loudly; the order comes from the Ped2 comparison of estimators (docs/flow.md 'Ped2 comparison').
    "ped2": dict(_GREY, flownet="auto", lr_decay_step=7000, iters=80000),
    "avenue": dict(_COLOUR, flownet="auto", lr_decay_step=100000, iters=80000, lam_int=0.001),
    "shanghai": dict(_COLOUR, flownet="auto", lr_decay_step=50000, iters=80000),
    # Ped1 (tools/prepare_data.py prepares it): the authors published no Ped1 schedule; Ped2's grey settings.
    "ped1": dict(_GREY, flownet="auto", lr_decay_step=7000, iters=80000),
    # A user's own footage (tools/prepare_data.py custom --src <folder>): ShanghaiTech's colour settings.
    "custom": dict(_COLOUR, flownet="auto", lr_decay_step=50000, iters=80000),
    # Synthetic data (ffpvad/data/toydata.py): small frames and a narrower U-Net so the whole pipeline runs in minutes on a
    # CPU.  It trains without the flow loss: no flow network here needs no downloaded weights.
    "toy": dict(
        _COLOUR, img_size=64, base_channels=32, flownet="none", iters=1000, batch_size=8, lr_decay_step=800,
        save_interval=500, val_interval=250, log_interval=25,
    ),
})


# What a method needs on top of the dataset preset lives with the method (ffpvad/methods/*.py, ``Method.settings``); the
# command line (ffpvad/cli.py) hands it to resolve() as ``settings_of``.  Precedence: field default < dataset preset <
# method settings < recipe < flags.
SettingsOf = Callable[[str], "tuple[dict[str, Any], Callable[[Config], dict[str, Any]]]"]


# Named recipes (--preset=<name>): a complete, measured set of flags for one purpose.  See docs/results.md 'The
# ped2_cpu recipe'.
RECIPES: Registry[dict[str, Any]] = Registry.of("--preset", {
    # Ped2 on a 2-core CPU within an hour (issue #6, docs/results.md R7-R8): 128 px, width 32, no flow loss, 6,000 steps
    # with the learning rates divided by 10 at 5,000, an EMA of G's weights, and two training videos held out for
    # label-free checkpoint selection (weights/g_best_val_ped2.pth).  About 23 minutes of training on 2 threads.
    "ped2_cpu": dict(
        dataset="ped2", img_size=128, base_channels=32, flownet="none", iters=6000, lr_decay_step=5000,
        val_interval=500, save_interval=1000, ema=0.999, val_holdout=2,
    ),
})


def canonical_dataset(name: str) -> str:
    name = DATASET_ALIASES.get(name.lower(), name.lower())
    if name not in PRESETS:
        valid = ", ".join(sorted(set(PRESETS) | set(DATASET_ALIASES)))
        raise UserError(f"unknown dataset '{name}': valid names are {valid}")
    return name


def preset(dataset: str) -> Config:
    """The default configuration of one dataset."""
    name = canonical_dataset(dataset)
    return Config(dataset=name, **PRESETS.get(name))


# --- command line ---------------------------------------------------------------------------------------------

def parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line naming it (and where to look), not a usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        missing = re.fullmatch(r"argument (--\w+): expected one argument", message)
        if missing:
            message = f"{missing[1]} needs a value: {missing[1]}=<value>"
        sys.stderr.write(f"error: {message} (run with --help for the valid flags)\n")
        raise SystemExit(2)


@dataclass(frozen=True)
class Flag:
    """A command-line flag that is not a Config field (eval.py's own): parsed beside the fields, in its own help
    group, checked like them, and returned apart from the Config (see parse_command_line)."""
    name: str
    type: type
    default: Any
    help: str
    group: str
    choices: tuple[str, ...] = ()
    range: Range | None = None


def check_setting(name: str, value: Any, kind: type = float, choices: Sequence[str] = (),
                  range: Range | None = None) -> None:
    """One UserError line naming the flag ``--name`` when ``value`` is not one of ``choices`` or, for a number,
    not finite and in ``range``."""
    if choices and value not in choices:
        raise UserError(f"--{name}={value} is not valid: choose one of {', '.join(choices)}")
    if kind in (int, float):
        allowed = range or ANY_NUMBER
        if not allowed.contains(value):
            raise UserError(f"--{name}={value} is not valid: {allowed.describe(kind)}")


def number_list(text: str, count: int, range: Range | None = None, name: str = "") -> tuple[float, ...]:
    """The ``count`` comma-separated numbers of ``text``, each finite and in ``range``; else one UserError line
    naming ``--name``."""
    allowed = range or ANY_NUMBER
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count or not all(allowed.contains(v) for v in values):
        example = ",".join(["1"] * count)
        raise UserError(f"--{name}={text} is not valid: {count} comma-separated numbers, each "
                        f"{allowed.describe(float, note=False).removeprefix('a finite number ')} (e.g. {example})")
    return values


def _check_field(f: dataclasses.Field, value: Any) -> None:
    if f.metadata.get("numbers"):
        number_list(value, f.metadata["numbers"], f.metadata.get("range"), f.name)
        return
    check_setting(f.name, value, field_type(f), f.metadata.get("choices", ()), f.metadata.get("range"))


def _converter(name: str, kind: type) -> Callable[[str], Any]:
    """argparse's ``type`` for a flag: a value that is no ``kind`` is one UserError line naming the flag."""
    if kind is bool:
        return parse_bool
    if kind is str:
        return str

    def convert(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise UserError(f"--{name}={text} is not {'an integer' if kind is int else 'a float'}") from None
    return convert


def _help(text: str, kind: type, range: Range | None, default: Any) -> str:
    parts = [text]
    if kind in (int, float):
        parts.append((range or ANY_NUMBER).describe(kind, note=False))  # the help text explains the values
    if default is not None:
        parts.append(f"default {default!r}" if kind is str else f"default {default}")
    return "; ".join(p for p in parts if p).replace("%", "%%")


def _add_flag(group: Any, name: str, kind: type, help: str, choices: Sequence[str], range: Range | None,
              default: Any) -> None:
    text = _help(help, kind, range, default)
    if kind is bool:
        group.add_argument(f"--{name}", type=parse_bool, nargs="?", const=True, metavar="BOOL", help=text)
    else:
        metavar = "{" + ",".join(choices) + "}" if choices else {int: "INT", float: "FLOAT", str: "TEXT"}[kind]
        group.add_argument(f"--{name}", type=_converter(name, kind), metavar=metavar, help=text)


def build_parser(prog: str, description: str, defaults: Config | None = None, extra: Sequence[Flag] = (),
                 names: Mapping[str, Sequence[str]] | None = None) -> argparse.ArgumentParser:
    """The parser of every Config field (one flag each, in its help group, with its choices, range, help and
    default: the field's, or ``defaults``'), of --config, and of the ``extra`` flags.  ``names``: the valid names
    of the fields that name a registry entry ({field: names}, from the registries: shown in --help, checked by
    whoever passes them).  Flags not given are absent from the namespace."""
    names = {"dataset": sorted({*PRESETS.names(), *DATASET_ALIASES}), "preset": RECIPES.names(), **(names or {})}
    defaults = defaults or Config()
    parser = OneLineParser(prog=prog, description=description, usage="%(prog)s [--flag=value ...]",
                           allow_abbrev=False, argument_default=argparse.SUPPRESS,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="PATH", type=str,
                        help="a saved run's config.json (<log_dir>/<run>/ or <results_dir>/<run>/): its settings, "
                             "with the flags given here taking precedence")
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    for f in fields(Config):
        _add_flag(groups[f.metadata["group"]], f.name, field_type(f), f.metadata["help"],
                  f.metadata.get("choices", names.get(f.name, ())), f.metadata.get("range"), getattr(defaults, f.name))
    for flag in extra:
        if flag.group not in groups:
            groups[flag.group] = parser.add_argument_group(flag.group)
        _add_flag(groups[flag.group], flag.name, flag.type, flag.help, flag.choices, flag.range, flag.default)
    return parser


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The settings of a saved run's config.json (config.write_config: a JSON object of Config fields), each
    checked; an unreadable file, an unknown key or an invalid value is one UserError line naming the file."""
    where = f"--config={path}"
    try:
        stored = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{where} is not a JSON file ({exc})") from None
    if not isinstance(stored, dict):
        raise UserError(f"{where} is not a saved config: expected a JSON object of settings, as in a run's "
                        f"config.json")
    unknown = sorted(set(stored) - {f.name for f in fields(Config)})
    if unknown:
        raise UserError(f"{where} has unknown settings: {', '.join(unknown)} (the valid ones are the flags of "
                        f"--help)")
    return checked_settings(stored, where)


def checked_settings(stored: dict[str, Any], where: str) -> dict[str, Any]:
    """The known settings of ``stored`` (a saved config), each of its field's type and valid values; one UserError
    line ``<where>: <name> is <value>, expected ...`` otherwise.  Unknown keys are left out (a checkpoint of an
    older version may hold settings since removed)."""
    known = {f.name: f for f in fields(Config)}
    values: dict[str, Any] = {}
    for name, value in stored.items():
        if name not in known:
            continue
        kind = field_type(known[name])
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            wanted = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[kind]
            shown = json.dumps(value) if isinstance(value, (int, float, str, bool, type(None))) else repr(value)
            raise UserError(f"{where}: {name} is {shown[:80]}, expected {wanted}")
        try:
            _check_field(known[name], value)
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None
        values[name] = value
    return values


def _help_defaults(argv: Sequence[str], settings_of: SettingsOf) -> Config:
    """What --help shows as the defaults: the config that the --dataset, --preset, --model and --config given with
    it resolve to; without them, what a plain run uses (the default dataset's preset)."""
    parser = OneLineParser(add_help=False, allow_abbrev=False, argument_default=argparse.SUPPRESS)
    for name in ("dataset", "preset", "model", "config"):
        parser.add_argument(f"--{name}")
    given = vars(parser.parse_known_args(argv)[0])
    stored = read_config_file(given.pop("config")) if "config" in given else {}
    return resolve({**stored, **given}, settings_of)


def resolve(given: dict[str, Any], settings_of: SettingsOf) -> Config:
    """The config of the flags ``given`` ({field: value}): field defaults < dataset preset < the settings of the
    model's method (``settings_of(model)``: settings, derived settings) < recipe (--preset) < the flags themselves."""
    recipe_name = given.get("preset", "")
    recipe = RECIPES.get(recipe_name) if recipe_name else {}
    cfg = preset(given.get("dataset", recipe.get("dataset", Config.dataset)))
    model = given.get("model", recipe.get("model", cfg.model))
    settings, derived = settings_of(model)
    cfg = cfg.replace(**settings)
    cfg = cfg.replace(**derived(cfg))
    cfg = cfg.replace(**{**recipe, **given, "dataset": cfg.dataset})
    validate(cfg)
    return cfg


class Parsed(NamedTuple):
    config: Config
    explicit: set[str]  # the fields the user set: by a flag, through --preset, or in the --config file
    extra: dict[str, Any]  # the values of the extra flags (Flag): given, else their default


def parse_command_line(argv: Sequence[str] | None, prog: str, description: str, settings_of: SettingsOf,
                       extra: Sequence[Flag] = (), names: Mapping[str, Sequence[str]] | None = None) -> Parsed:
    """Config from presets + --config + flags, the fields the user set explicitly (a resume keeps the others), and
    the values of the ``extra`` flags.  ``--help`` shows, as the defaults, what the --dataset, --preset, --model
    and --config given with it resolve to."""
    argv = list(sys.argv[1:] if argv is None else argv)
    defaults = _help_defaults(argv, settings_of) if ("-h" in argv or "--help" in argv) else None
    given = vars(build_parser(prog, description, defaults, extra, names).parse_args(argv))
    values = {}
    for flag in extra:
        values[flag.name] = given.pop(flag.name, flag.default)
        check_setting(flag.name, values[flag.name], flag.type, flag.choices, flag.range)
    stored = read_config_file(given.pop("config")) if "config" in given else {}
    merged = {**stored, **given}
    cfg = resolve(merged, settings_of)
    recipe = RECIPES.get(merged["preset"]) if merged.get("preset") else {}
    explicit = set(given) | set(recipe)
    if stored:  # the file's settings count as given where they differ from what its presets alone give
        base = resolve({k: merged[k] for k in ("dataset", "preset", "model") if k in merged}, settings_of)
        plain = Config()
        explicit |= {k for k, v in stored.items() if v != getattr(plain if k in ("dataset", "preset", "model")
                                                                      else base, k)}
    return Parsed(cfg, explicit, values)


def validate(cfg: Config) -> None:
    """Every field against its metadata (choices; numbers finite and in range).  The rules that join a field to a
    registry entry (a --stage of the model's method, a --score of a PSNR-scored one) are cli.check_names'."""
    for f in fields(Config):
        _check_field(f, getattr(cfg, f.name))


def config_from_dict(stored: Any, where: str = "the stored config") -> Config:
    """Rebuild a Config stored in a checkpoint, every setting checked (:func:`checked_settings`; ``where`` heads
    the message); fields added since are filled with their defaults."""
    if not isinstance(stored, dict):
        raise UserError(f"{where} is a {type(stored).__name__}, not a dictionary of settings")
    cfg = Config(**checked_settings(stored, where))
    try:
        validate(cfg)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    return cfg


def write_config(cfg: Config, folder: Path | str) -> Path:
    path = Path(folder) / "config.json"
    atomic_write_text(path, cfg.to_json() + "\n")
    return path
