"""One frozen configuration for training and evaluation, its per-dataset presets and its command line.

Every setting is a field of :class:`Config`; the command-line flags of ``train.py`` and ``eval.py`` are generated
from the fields, so a new setting is one new line here.  Precedence: field default < dataset preset < flags given on
the command line (and, when resuming, < the stored config of the checkpoint for the fields not given again).

Published FFP settings (Liu et al., CVPR 2018; the authors' ``training_hyper_params/hyper_params.ini``):
intensity (L2) weight 1 (Avenue: 0.001), gradient weight 1, flow weight 2, adversarial weight 0.05; Adam with
learning rates 1e-4 / 1e-5 (G / D) on the grey datasets and 2e-4 / 2e-5 on the colour ones, each divided by 10
after 7,000 (Ped2), 100,000 (Avenue) or 50,000 (ShanghaiTech) steps; clips of 4 input frames + 1 target at 256x256.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

from errors import UserError

DATASET_ALIASES = {"shanghaitech": "shanghai"}


@dataclass(frozen=True)
class Config:
    # --- data -------------------------------------------------------------------------------------------------
    dataset: str = "toy"  # a preset name: toy, ped1, ped2, avenue, shanghai (alias shanghaitech), custom
    preset: str = ""  # a named recipe over the dataset preset (RECIPES below: ped2_cpu); empty = none
    data_root: str = "data"  # folder holding <dataset>/{training,testing}/frames/<video>/<frame>.jpg
    labels: str = ""  # label file or folder; empty = look beside the dataset (see dataset.find_label_source)
    cache_dir: str = "cache"  # decoded, resized uint8 frames are kept here (one .npy per video)
    img_size: int = 256  # frames are resized to img_size x img_size
    clip_len: int = 5  # 4 input frames + 1 predicted frame
    # --- networks ---------------------------------------------------------------------------------------------
    model: str = "ffp"  # generator registry name (models/__init__.py); it also picks the method (methods.py)
    base_channels: int = 64  # width of the first U-Net stage (64 in the paper)
    discriminator: str = "pixel"  # discriminator registry name (pixel: FFP's PatchGAN; dcgan: Skip-GANomaly's)
    flownet: str = "none"  # flow estimator (flownet/__init__.py): auto, flownet2sd, spynet, lucaskanade, none
    flownet_weights: str = ""  # weights file of the flow network; empty = the usual places in weights/
    semantic: str = "auto"  # F2LM's semantic input (models/semantic.py): auto, deeplabv3, none
    stage: str = "generator"  # MAMA (--model=f2lm): generator (stage 1) or destroyer (stage 2, needs --pretrained)
    # --- optimisation -----------------------------------------------------------------------------------------
    iters: int = 80000
    batch_size: int = 4
    lr_g: float = 1e-4
    lr_d: float = 1e-5
    lr_decay_step: int = 7000  # both learning rates are multiplied by lr_decay_gamma at this step
    lr_decay_gamma: float = 0.1
    adam_beta1: float = 0.9  # Adam's first beta for G and D (Skip-GANomaly: 0.5)
    weight_decay: float = 0.0  # decoupled weight decay (AdamW) of G and D; 0 = plain Adam (MAMA: 1e-4)
    lam_int: float = 1.0
    lam_grad: float = 1.0
    lam_flow: float = 2.0
    lam_adv: float = 0.05
    flow_loss_scale: float = 20.0  # flows enter the flow loss divided by this (FlowNet's native output unit)
    lam_con: float = 50.0  # Skip-GANomaly: weight of the contextual (L1 reconstruction) loss
    lam_lat: float = 1.0  # Skip-GANomaly: weight of the latent loss (L2 between D's features of real and fake)
    lam_triplet: float = 1.0  # MAMA: weight of the two triplet losses (motion and label)
    triplet_margin: float = 0.2  # MAMA: margin of the triplet losses
    d_reinit_below: float = 0.0  # re-initialise D when its loss falls below this (Skip-GANomaly: 1e-5; 0 = never)
    manualseed: int = 50
    ema: float = 0.0  # decay of an exponential moving average of G's weights, which validation, checkpoints and
    #                   eval.py then use (0 = off; 0.999 averages over about the last 1,000 steps)
    # --- run control ------------------------------------------------------------------------------------------
    save_interval: int = 10000
    val_interval: int = 1000
    log_interval: int = 20
    val_holdout: int = 0  # training videos (the last N by name) kept out of training; every validation scores
    #                       their mean PSNR and keeps weights/g_best_val_<dataset>.pth: selection without test labels
    resume: str = ""  # checkpoint name in weights/ (latest_ped2) or a path: continue that run exactly
    trained_model: str = ""  # eval.py: checkpoint name in weights/ (g_best_auc_ped2) or a path
    pretrained: str = ""  # train.py: initialise G and D from this checkpoint (another dataset), fresh optimizers
    weights_dir: str = "weights"
    results_dir: str = "results"
    log_dir: str = "tensorboard_log"
    tensorboard: bool = True
    # --- compute ----------------------------------------------------------------------------------------------
    device: str = "auto"  # auto (cuda when available), cpu, cuda, cuda:1
    amp: str = "auto"  # auto, off, bf16, fp16: autocast precision (auto: see engine.resolve_amp)
    channels_last: str = "auto"  # auto, on, off: NHWC memory format for the convolutions
    eval_batch_size: int = 0  # frames per evaluation batch; 0 = 4 on the CPU (fastest in bench/speed.py), 32 on CUDA
    num_threads: int = 0  # torch CPU threads; 0 = torch's default
    # --- evaluation -------------------------------------------------------------------------------------------
    macro_single_class: str = "exclude"  # exclude | pad: how videos with one class enter the macro AUC
    score_norm: str = "video"  # video | global: min-max the anomaly score per video (FFP protocol) or over the test set
    score_lambda: float = 0.9  # Skip-GANomaly: score = lambda * reconstruction error + (1 - lambda) * latent error
    score_weights: str = "1,1,1,1"  # MAMA: weights of the z-scored motion triplet, label triplet, generator error
    #                                 and Destroyer error (fixed; tools/mama_weights.py searches them on test labels)
    plots: bool = True  # eval.py: write ROC and per-video score plots

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)

    @property
    def n_inputs(self) -> int:
        return self.clip_len - 1


# Presets hold only what differs from the field defaults.
_GREY = dict(lr_g=1e-4, lr_d=1e-5)
_COLOUR = dict(lr_g=2e-4, lr_d=2e-5)
PRESETS: dict[str, dict[str, Any]] = {
    # flownet=auto: FlowNet2-SD (the paper's) when its weights are present, else SPyNet, else no flow loss, said
    # loudly; the order comes from the Ped2 comparison of estimators in the README.
    "ped2": dict(_GREY, flownet="auto", lr_decay_step=7000, iters=80000),
    "avenue": dict(_COLOUR, flownet="auto", lr_decay_step=100000, iters=80000, lam_int=0.001),
    "shanghai": dict(_COLOUR, flownet="auto", lr_decay_step=50000, iters=80000),
    # Ped1 (tools/prepare_data.py prepares it): the authors published no Ped1 schedule; Ped2's grey settings.
    "ped1": dict(_GREY, flownet="auto", lr_decay_step=7000, iters=80000),
    # A user's own footage (tools/prepare_data.py custom --src <folder>): ShanghaiTech's colour settings.
    "custom": dict(_COLOUR, flownet="auto", lr_decay_step=50000, iters=80000),
    # Synthetic data (toydata.py): small frames and a narrower U-Net so the whole pipeline runs in minutes on a
    # CPU.  It trains without the flow loss: no flow network here needs no downloaded weights.
    "toy": dict(
        _COLOUR, img_size=64, base_channels=32, flownet="none", iters=1000, batch_size=8, lr_decay_step=800,
        save_interval=500, val_interval=250, log_interval=25,
    ),
}


# Per generator: what its method needs on top of the dataset preset (precedence: field default < dataset preset
# < model preset < recipe < flags).
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # Skip-GANomaly (Akcay et al., IJCNN 2019), values of the authors' code (../shared/METHODS.md section 2): DCGAN
    # discriminator, Adam 2e-4 for both networks with beta1 0.5, never decayed, weights adversarial 1, contextual 50,
    # latent 1, D re-initialised below a loss of 1e-5.  A reconstruction method has no use for a flow network.
    "skipganomaly": dict(
        discriminator="dcgan", flownet="none", lr_g=2e-4, lr_d=2e-4, adam_beta1=0.5, lr_decay_gamma=1.0,
        lam_adv=1.0, lam_con=50.0, lam_lat=1.0, d_reinit_below=1e-5,
    ),
    # MAMA's F2LM (authors' code, ../shared/METHODS.md): flows feed an encoder (no flow loss), intensity 1 on every
    # dataset, AdamW with weight decay equal to the G learning rate (MODEL_DERIVED), no decay schedule.
    "f2lm": dict(flownet="auto", lr_decay_gamma=1.0, lam_int=1.0, lam_grad=1.0, lam_adv=0.05),
}

# Model settings that follow other settings of the resolved dataset preset (applied before recipes and flags).
MODEL_DERIVED: dict[str, Callable[["Config"], dict[str, Any]]] = {
    "f2lm": lambda cfg: dict(weight_decay=cfg.lr_g),  # the authors': 1e-4 on Ped1/2, 2e-4 on Avenue/ShanghaiTech
}

# Named recipes (--preset=<name>): a complete, measured set of flags for one purpose.  See RESULTS.md.
RECIPES: dict[str, dict[str, Any]] = {
    # Ped2 on a 2-core CPU within an hour (issue #6, RESULTS.md R7-R9): 128 px, width 32, no flow loss, 6,000 steps
    # with the learning rates divided by 10 at 5,000, an EMA of G's weights, and two training videos held out for
    # label-free checkpoint selection (weights/g_best_val_ped2.pth).  About 23 minutes of training on 2 threads.
    "ped2_cpu": dict(
        dataset="ped2", img_size=128, base_channels=32, flownet="none", iters=6000, lr_decay_step=5000,
        val_interval=500, save_interval=1000, ema=0.999, val_holdout=2,
    ),
}


def canonical_dataset(name: str) -> str:
    name = DATASET_ALIASES.get(name.lower(), name.lower())
    if name not in PRESETS:
        valid = ", ".join(sorted(set(PRESETS) | set(DATASET_ALIASES)))
        raise UserError(f"unknown dataset '{name}': valid names are {valid}")
    return name


def preset(dataset: str) -> Config:
    """The default configuration of one dataset."""
    name = canonical_dataset(dataset)
    return Config(dataset=name, **PRESETS[name])


# --- command line ---------------------------------------------------------------------------------------------

def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line naming it (and where to look), not a usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"error: {message} (run with --help for the valid flags)\n")
        raise SystemExit(2)


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = _OneLineParser(prog=prog, description=description, allow_abbrev=False,
                            argument_default=argparse.SUPPRESS)
    defaults = Config()
    for f in fields(Config):
        default = getattr(defaults, f.name)
        if f.type in ("bool", bool):
            parser.add_argument(f"--{f.name}", type=_parse_bool, nargs="?", const=True, metavar="BOOL",
                                help=f"(default {default})")
        else:
            kind = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
            parser.add_argument(f"--{f.name}", type=kind, metavar=f.name.upper(), help=f"(default {default!r})")
    return parser


def resolve(given: dict[str, Any]) -> Config:
    """The config of the flags ``given`` ({field: value}): field defaults < dataset preset < model preset < recipe
    (--preset) < the flags themselves."""
    recipe_name = given.get("preset", "")
    if recipe_name and recipe_name not in RECIPES:
        raise UserError(f"unknown --preset '{recipe_name}': valid names are {', '.join(sorted(RECIPES))}")
    recipe = RECIPES.get(recipe_name, {})
    cfg = preset(given.get("dataset", recipe.get("dataset", Config.dataset)))
    model = given.get("model", recipe.get("model", cfg.model))
    cfg = cfg.replace(**MODEL_PRESETS.get(model, {}))
    if model in MODEL_DERIVED:
        cfg = cfg.replace(**MODEL_DERIVED[model](cfg))
    cfg = cfg.replace(**{**recipe, **given, "dataset": cfg.dataset})
    validate(cfg)
    return cfg


def parse_args(argv: Sequence[str] | None, prog: str, description: str) -> tuple[Config, set[str]]:
    """Config from presets + flags, and the set of fields the user set explicitly, by a flag or through --preset
    (a resume keeps the others)."""
    parser = build_parser(prog, description)
    given = vars(parser.parse_args(argv))
    explicit = set(given) | set(RECIPES.get(given.get("preset", ""), {}))
    return resolve(given), explicit


_CHOICES = {
    "amp": ("auto", "off", "bf16", "fp16"),
    "channels_last": ("auto", "on", "off"),
    "macro_single_class": ("exclude", "pad"),
    "score_norm": ("video", "global"),
    "semantic": ("auto", "deeplabv3", "none"),
    "stage": ("generator", "destroyer"),
}


def score_weights(cfg: Config) -> tuple[float, float, float, float]:
    """MAMA's four score weights (motion triplet, label triplet, generator error, Destroyer error)."""
    try:
        values = tuple(float(v) for v in cfg.score_weights.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or any(v < 0 for v in values):
        raise UserError(f"--score_weights={cfg.score_weights} is not valid: four non-negative numbers, e.g. 1,1,1,1 "
                        f"(motion triplet, label triplet, generator error, Destroyer error)")
    return values  # type: ignore[return-value]


def validate(cfg: Config) -> None:
    for name, choices in _CHOICES.items():
        if getattr(cfg, name) not in choices:
            raise UserError(f"--{name}={getattr(cfg, name)} is not valid: choose one of {', '.join(choices)}")
    if cfg.eval_batch_size < 0:
        raise UserError(f"--eval_batch_size must be >= 0 (0 = automatic), got {cfg.eval_batch_size}")
    for name in ("img_size", "batch_size", "iters", "base_channels"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name} must be a positive integer, got {getattr(cfg, name)}")
    if not 0.0 <= cfg.ema < 1.0:
        raise UserError(f"--ema must be in [0, 1) (0 = off, e.g. 0.999), got {cfg.ema}")
    if cfg.val_holdout < 0:
        raise UserError(f"--val_holdout must be >= 0 (0 = off), got {cfg.val_holdout}")
    if cfg.clip_len < 1:
        raise UserError(f"--clip_len must be at least 1, got {cfg.clip_len}")
    if not 0.0 <= cfg.score_lambda <= 1.0:
        raise UserError(f"--score_lambda must be in [0, 1], got {cfg.score_lambda}")
    if not 0.0 < cfg.adam_beta1 < 1.0:
        raise UserError(f"--adam_beta1 must be in (0, 1), got {cfg.adam_beta1}")
    score_weights(cfg)
    if cfg.weight_decay < 0:
        raise UserError(f"--weight_decay must be >= 0, got {cfg.weight_decay}")
    if cfg.stage != "generator" and cfg.model != "f2lm":
        raise UserError(f"--stage={cfg.stage} is MAMA's second stage: it needs --model=f2lm (got --model={cfg.model})")
    if cfg.img_size % 8:
        raise UserError(f"--img_size must be a multiple of 8 (the U-Net halves it three times), got {cfg.img_size}")
    for name in ("save_interval", "val_interval", "log_interval"):
        if getattr(cfg, name) < 0:
            raise UserError(f"--{name} must be >= 0 (0 disables it), got {getattr(cfg, name)}")


def config_from_dict(stored: dict[str, Any]) -> Config:
    """Rebuild a Config stored in a checkpoint; fields added since are filled with their defaults."""
    known = {f.name for f in fields(Config)}
    return Config(**{k: v for k, v in stored.items() if k in known})


def write_config(cfg: Config, folder: Path | str) -> Path:
    from ioutil import atomic_write_text
    path = Path(folder) / "config.json"
    atomic_write_text(path, cfg.to_json() + "\n")
    return path
