"""Configuration: presets, flags generated from the dataclass, clear errors."""
import json
import subprocess
import sys

import pytest

from config import Config, PRESETS, parse_args, preset
from conftest import ROOT
from errors import UserError


def test_presets_carry_the_published_ffp_settings():
    ped2, avenue, shanghai = preset("ped2"), preset("avenue"), preset("shanghaitech")
    assert (ped2.lr_g, ped2.lr_d) == (1e-4, 1e-5)
    assert (avenue.lr_g, avenue.lr_d) == (2e-4, 2e-5) == (shanghai.lr_g, shanghai.lr_d)
    assert shanghai.dataset == "shanghai"
    for cfg in (ped2, avenue, shanghai):
        assert (cfg.clip_len, cfg.img_size, cfg.lam_grad, cfg.lam_flow, cfg.lam_adv) == (5, 256, 1.0, 2.0, 0.05)
    assert ped2.lam_int == 1.0 and avenue.lam_int == 0.001  # the authors' hyper_params.ini
    assert preset("toy").flownet == "none"  # the default run needs no downloaded weights


def test_flags_override_the_preset_and_are_reported_as_explicit():
    cfg, explicit = parse_args(["--dataset=ped2", "--manualseed=7", "--iters=60000", "--tensorboard=false",
                                "--resume=latest_ped2"], "t", "")
    assert (cfg.manualseed, cfg.iters, cfg.tensorboard, cfg.resume) == (7, 60000, False, "latest_ped2")
    assert cfg.lr_g == 1e-4  # still the preset's
    assert explicit == {"dataset", "manualseed", "iters", "tensorboard", "resume"}


def test_every_field_has_a_flag():
    cfg, _ = parse_args([f"--{name}={getattr(Config(), name)}" for name in Config.__dataclass_fields__], "t", "")
    assert cfg == Config()


def test_unknown_dataset_lists_the_valid_ones():
    with pytest.raises(UserError, match="valid names are avenue, custom, ped1, ped2, shanghai, shanghaitech, toy"):
        preset("ped3")


def test_bad_choice_is_a_clear_error():
    with pytest.raises(UserError, match="--amp=fp8 is not valid"):
        parse_args(["--amp=fp8"], "t", "")


def test_config_round_trips_through_json():
    cfg = preset("avenue")
    assert Config(**json.loads(cfg.to_json())) == cfg
    assert set(PRESETS) == {"ped1", "ped2", "avenue", "shanghai", "custom", "toy"}


@pytest.mark.parametrize("script", ["train.py", "eval.py"])
def test_unknown_flag_is_one_line_and_exit_2(script):
    run = subprocess.run([sys.executable, script, "--learning_rate=3"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and "--learning_rate=3" in run.stderr


def test_unknown_dataset_from_the_command_line_is_one_line():
    run = subprocess.run([sys.executable, "train.py", "--dataset=ucsd"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.startswith("error: unknown dataset 'ucsd'")
    assert "Traceback" not in run.stderr


def test_recipe_preset_sits_between_the_presets_and_the_flags():
    cfg, explicit = parse_args(["--preset=ped2_cpu", "--manualseed=3", "--iters=1000"], "t", "")
    assert (cfg.dataset, cfg.img_size, cfg.base_channels, cfg.flownet) == ("ped2", 128, 32, "none")
    assert (cfg.ema, cfg.val_holdout, cfg.lr_decay_step) == (0.999, 2, 5000)
    assert (cfg.lr_g, cfg.lr_d) == (1e-4, 1e-5)  # from the ped2 preset underneath
    assert (cfg.manualseed, cfg.iters) == (3, 1000)  # flags win
    assert {"ema", "val_holdout", "img_size"} <= explicit  # a resume keeps the recipe's fields as set by the user
    with pytest.raises(UserError, match="unknown --preset 'ped9': valid names are ped2_cpu"):
        parse_args(["--preset=ped9"], "t", "")
