"""Configuration: presets, flags generated from the dataclass, clear errors."""
import ast
import dataclasses
import json
import re
import subprocess
import sys

import pytest

from ffpvad.cli import parse_args, parse_command_line, registry_names
from ffpvad.config import GROUPS, Config, PRESETS, field_type, fields_of, preset, write_config
from conftest import ROOT
from ffpvad.errors import UserError


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


# --- field metadata -------------------------------------------------------------------------------------------

def test_fields_of_gives_the_former_hand_kept_lists():
    from ffpvad.commands import eval as eval_cli

    assert set(fields_of("architecture")) == {"dataset", "model", "base_channels", "discriminator", "img_size",
                                              "clip_len", "flownet", "semantic", "stage", "ema", "val_holdout"}
    assert set(fields_of("stage_one")) == {"img_size", "clip_len", "base_channels", "flownet", "flownet_weights",
                                           "semantic", "triplet_margin", "discriminator"}
    assert set(eval_cli.EVAL_OVERRIDES) == set(fields_of("eval_override")) == {
        "dataset", "data_root", "labels", "cache_dir", "device", "amp", "channels_last", "eval_batch_size",
        "num_threads", "results_dir", "weights_dir", "macro_single_class", "plots", "score_norm", "score_lambda",
        "score_weights", "score"}
    names = [f.name for f in dataclasses.fields(Config)]
    assert list(fields_of("stage_one")) == [n for n in names if n in fields_of("stage_one")]  # field order
    with pytest.raises(ValueError, match="unknown kind"):
        fields_of("architecture_fields")


def test_every_field_has_a_group_and_help_and_every_number_is_checked():
    for f in dataclasses.fields(Config):
        assert f.metadata["group"] in GROUPS and f.metadata["help"], f.name
        if field_type(f) is float:  # nan and inf never pass, whatever the field
            for bad in ("nan", "inf", "-inf"):
                with pytest.raises(UserError, match=rf"^--{f.name}={bad} is not valid: a finite number"):
                    parse_args([f"--{f.name}={bad}"], "t", "")


@pytest.mark.parametrize("flag, message", [
    ("--lr_g=nan", "--lr_g=nan is not valid: a finite number > 0"),
    ("--lr_g=inf", "--lr_g=inf is not valid: a finite number > 0"),
    ("--lr_g=-1", "--lr_g=-1.0 is not valid: a finite number > 0"),
    ("--lr_d=-1e-5", "--lr_d=-1e-05 is not valid: a finite number > 0"),
    ("--lr_d=0", "--lr_d=0.0 is not valid: a finite number > 0"),
    ("--num_threads=-1", "--num_threads=-1 is not valid: an integer >= 0"),
    ("--lr_decay_gamma=inf", "--lr_decay_gamma=inf is not valid: a finite number > 0"),
    ("--ema=1", "--ema=1.0 is not valid: a finite number in [0, 1) (0 = off, e.g. 0.999)"),
    ("--img_size=60", "--img_size=60 is not valid: an integer >= 8, a multiple of 8"),
    ("--eval_batch_size=-4", "--eval_batch_size=-4 is not valid: an integer >= 0 (0 = automatic)"),
    ("--iters=ten", "--iters=ten is not an integer"),
    ("--lam_adv=x", "--lam_adv=x is not a float"),
])
def test_bad_numbers_are_one_line_naming_the_flag_and_the_valid_range(flag, message):
    with pytest.raises(UserError) as info:
        parse_args(["--dataset=ped2", flag], "t", "")
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_bad_number_from_the_command_line_is_one_line_and_exit_2():
    run = subprocess.run([sys.executable, "train.py", "--lr_g=nan"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr == "error: --lr_g=nan is not valid: a finite number > 0\n"


# --- help -----------------------------------------------------------------------------------------------------

def _help_of(argv, capsys, extra=()):
    with pytest.raises(SystemExit) as info:
        parse_command_line(argv + ["--help"], "t", "", extra)
    assert info.value.code == 0
    return capsys.readouterr().out


def _entry(text: str, flag: str) -> str:
    """The help of one flag, on one line."""
    found = re.search(rf"^  --{flag}\b(.*?)(?=^  -|^\S|\Z)", text, re.S | re.M)
    assert found, flag
    return " ".join(found[1].split())


def test_help_is_grouped_with_choices_help_and_defaults(capsys):
    text = _help_of([], capsys)
    headings = re.findall(r"^(\S[^:\n]*):$", text, re.M)
    assert headings[-len(GROUPS):] == list(GROUPS)
    assert _entry(text, "amp").startswith("{auto,off,bf16,fp16} autocast precision")
    # Without --dataset, the defaults of a plain run: the toy preset's.
    assert _entry(text, "lr_g").endswith("a finite number > 0; default 0.0002")
    assert _entry(text, "dataset").startswith("{avenue,custom,ped1,ped2,shanghai,shanghaitech,toy} a dataset preset")
    assert "default 'toy'" in _entry(text, "dataset") and "shanghaitech = shanghai" in _entry(text, "dataset")
    # Every setting that names a registry entry lists the registry's names, read from it.
    for flag, names in registry_names().items():
        assert _entry(text, flag).startswith("{" + ",".join(names) + "}"), flag
    assert _entry(text, "stage").startswith("{generator,destroyer}")
    assert "--config PATH" in text


def test_help_shows_the_defaults_of_the_dataset_preset_and_model_given(capsys):
    assert _entry(_help_of(["--dataset=ped2"], capsys), "lr_decay_step").endswith("default 7000")
    ped2_cpu = _help_of(["--preset=ped2_cpu"], capsys)
    assert _entry(ped2_cpu, "img_size").endswith("default 128") and _entry(ped2_cpu, "ema").endswith("default 0.999")
    skip = _help_of(["--dataset", "ped2", "--model=skipganomaly"], capsys)
    assert _entry(skip, "discriminator").endswith("default 'dcgan'") and _entry(skip, "lr_d").endswith("0.0002")
    with pytest.raises(UserError, match="unknown dataset 'ped9'"):
        _help_of(["--dataset=ped9"], capsys)


@pytest.mark.parametrize("script", ["train.py", "eval.py"])
def test_help_runs_as_a_script(script):
    run = subprocess.run([sys.executable, script, "--dataset=ped2", "--help"], cwd=ROOT, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    assert "optimisation:" in run.stdout and "default 7000" in run.stdout
    assert ("\neval.py only:\n  --pixel_masks TEXT" in run.stdout) == (script == "eval.py")  # its own flags


# --- --config -------------------------------------------------------------------------------------------------

def test_config_file_reruns_a_saved_run_with_flags_on_top(tmp_path):
    saved, _ = parse_args(["--dataset=ped2", "--manualseed=7", "--lr_g=3e-4", "--ema=0.99", "--plots=false"],
                          "t", "")
    path = write_config(saved, tmp_path)
    cfg, explicit = parse_args([f"--config={path}", "--iters=5"], "t", "")
    assert cfg == saved.replace(iters=5)
    # What the file sets beyond its presets counts as given (a resume or eval.py applies it); the rest does not.
    assert explicit == {"dataset", "manualseed", "lr_g", "ema", "plots", "iters"}
    again, _ = parse_args([f"--config={path}", "--lr_g=1e-3", "--dataset=avenue"], "t", "")
    assert (again.lr_g, again.dataset, again.manualseed, again.lam_int) == (1e-3, "avenue", 7, 1.0)


def test_a_bad_config_file_is_one_line_naming_it(tmp_path):
    stored = json.loads(preset("toy").to_json())
    cases = {
        "missing.json": None,
        "text.json": "not json {",
        "list.json": "[1, 2]",
        "typo.json": json.dumps({**stored, "lr_gg": 1e-4, "iter": 3}),
        "nan.json": json.dumps({**stored, "lr_g": float("nan")}),
        "type.json": json.dumps({**stored, "iters": "many"}),
    }
    expected = {
        "missing.json": "cannot read it", "text.json": "is not a JSON file", "list.json": "is not a saved config",
        "typo.json": "has unknown settings: iter, lr_gg", "nan.json": "--lr_g=nan is not valid: a finite number > 0",
        "type.json": 'iters is "many", expected an integer',
    }
    for name, text in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(UserError) as info:
            parse_args([f"--config={tmp_path / name}"], "t", "")
        message = str(info.value)
        assert message.startswith(f"--config={tmp_path / name}") and expected[name] in message, message
        assert "\n" not in message


# --- eval.py's own flags and detect.py's --------------------------------------------------------------------

def test_eval_flags_are_ordinary_flags_in_both_forms():
    from ffpvad.commands import eval as eval_cli

    def extra(*argv):
        return parse_command_line(list(argv), "eval.py", "", eval_cli.EXTRA_FLAGS).extra

    assert extra() == {"pixel_masks": "", "pixel_sigma": 2.0, "fpr": 0.01, "quantize": "off"}
    assert extra("--fpr", "0.05", "--quantize", "int8") == extra("--fpr=0.05", "--quantize=int8")
    assert extra("--fpr", "0.05", "--pixel_masks", "m")["fpr"] == 0.05
    cfg, explicit, values = parse_command_line(["--pixel_sigma=1", "--amp=off"], "eval.py", "", eval_cli.EXTRA_FLAGS)
    assert explicit == {"amp"} and values["pixel_sigma"] == 1.0 and not hasattr(cfg, "pixel_sigma")
    for flag, message in (("--fpr=1", "--fpr=1.0 is not valid: a finite number in (0, 1)"),
                          ("--fpr=nan", "--fpr=nan is not valid"),
                          ("--pixel_sigma=-1", "--pixel_sigma=-1.0 is not valid: a finite number >= 0"),
                          ("--pixel_sigma=inf", "--pixel_sigma=inf is not valid"),
                          ("--quantize=int4", "--quantize=int4 is not valid: choose one of off, int8")):
        with pytest.raises(UserError, match=re.escape(message)):
            extra(flag)


def test_eval_flag_without_a_value_is_one_line(capsys):
    from ffpvad.commands import eval as eval_cli

    with pytest.raises(SystemExit) as info:
        eval_cli.main(["--quantize", "--trained_model=x"])
    message = capsys.readouterr().err
    assert info.value.code == 2 and message.startswith("error: --quantize needs a value") and message.count("\n") == 1


@pytest.mark.parametrize("flag, message", [
    ("--gap=nan", "--gap=nan is not valid: a finite number >= 0"),
    ("--heat_max=0", "--heat_max=0.0 is not valid: a finite number > 0"),
    ("--threshold=inf", "--threshold=inf is not valid: a finite number in [0, 1]"),
    ("--sigma=-1", "--sigma=-1.0 is not valid"),
    ("--num_threads=-2", "--num_threads=-2 is not valid: an integer >= 0"),
    ("--fpr=nan", "--fpr=nan must be between 0 and 1"),
])
def test_detect_numbers_are_finite_and_in_range(flag, message):
    from ffpvad.commands import detect

    args = detect.build_parser().parse_args(["--video=v.mp4", "--trained_model=m", flag])
    with pytest.raises(UserError, match=re.escape(message)):
        detect.check_options(args)
