"""Damaged checkpoints, flags that were found late and words that misled (issue: nothing lost, nothing silent, round
two): each refused in one line before any work, by every reader of a checkpoint (eval.py, detect.py, --resume,
--pretrained), naming the file, what is wrong and what to do."""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest
import torch

from ffpvad.commands import detect
from ffpvad.commands import eval as eval_cli
from ffpvad.commands import train
from ffpvad.checkpoint import load_checkpoint, read_for_scoring
from ffpvad.training.engine import Trainer, load_resume_state
from ffpvad.errors import UserError
from ffpvad.ioutil import atomic_path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, toy_root):
    """A real two-step toy checkpoint (width 8, 32 px) and a short video of the toy scene."""
    from ffpvad.config import preset
    from test_detect import scene, write_mp4

    folder = tmp_path_factory.mktemp("damaged")
    cfg = preset("toy").replace(data_root=str(toy_root), cache_dir=str(folder / "cache"),
                                weights_dir=str(folder / "weights"), results_dir=str(folder / "results"),
                                log_dir=str(folder / "tb"), img_size=32, base_channels=8, batch_size=4, iters=2,
                                val_interval=0, save_interval=0, log_interval=0, tensorboard=False, device="cpu")
    Trainer(cfg, progress=False).fit()
    return cfg, Path(cfg.weights_dir) / "latest_toy.pth", write_mp4(folder / "clip.mp4", scene(12, 1))


def damaged(trained, tmp_path: Path, change) -> Path:
    """A copy of the trained checkpoint with ``change(state)`` applied, written as torch would."""
    state = torch.load(trained[1], weights_only=True)
    change(state)
    path = tmp_path / "damaged.pth"
    torch.save(state, path)
    return path


def _set(key, value):
    def change(state):
        state[key] = value
    return change


def _config(key, value):
    def change(state):
        state["config"][key] = value
    return change


def _weights(part, value):
    def change(state):
        first = next(k for k, v in state[part].items() if v.is_floating_point())
        state[part][first] = torch.full_like(state[part][first], value)
    return change


DAMAGES = {
    "config-a-string": (_set("config", "ffp"), r"its config is a str, not a dictionary"),
    "format-version-a-string": (_set("format_version", "1"), r"its format_version is '1', not a whole number"),
    "img_size-abc": (_config("img_size", "abc"), r'img_size is "abc", expected an integer'),
    "base_channels-2.5": (_config("base_channels", 2.5), r"base_channels is 2.5, expected an integer"),
    "img_size-out-of-range": (_config("img_size", -32), r"--img_size=-32 is not valid"),
    "model-unknown": (_config("model", "ffp9"), r"its config names --model=ffp9, which this code does not have "
                                                r"\(it has .*ffp.*\)"),
    "step-a-string": (_set("step", "ten"), r"its step is 'ten', not a whole number"),
    "best_val_psnr-nan": (_set("best_val_psnr", math.nan), r"its best_val_psnr is nan, not a number"),
    "generator-a-list": (_set("generator", [1, 2]), r"its generator is a list, not a dictionary"),
    "generator-nan": (_weights("generator", math.nan), r"1 generator weights are not finite \(first: .*\): the run "
                                                       r"diverged before it was saved"),
    "discriminator-inf": (_weights("discriminator", math.inf), r"1 discriminator weights are not finite"),
}


def readers(trained, path: Path, tmp_path: Path):
    cfg, _, video = trained
    return {
        "read_for_scoring": lambda: read_for_scoring(path),
        "eval.py": lambda: eval_cli.main([f"--trained_model={path}", "--dataset=toy", f"--data_root={cfg.data_root}",
                                          f"--results_dir={tmp_path / 'results'}", "--device=cpu"]),
        "detect.py": lambda: detect.main([f"--video={video}", f"--trained_model={path}", "--progress=false",
                                          f"--output={tmp_path / 'out'}"]),
        "--resume": lambda: load_resume_state(cfg.replace(resume=str(path), iters=10), {"resume", "iters"}),
        "--pretrained": lambda: Trainer(cfg.replace(pretrained=str(path), weights_dir=str(tmp_path / "w")),
                                        progress=False),
    }


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_checkpoint_is_one_line_for_every_reader(trained, tmp_path, damage):
    change, words = DAMAGES[damage]
    path = damaged(trained, tmp_path, change)
    for reader, call in readers(trained, path, tmp_path).items():
        with pytest.raises(UserError, match=words) as info:
            call()
        message = str(info.value)
        assert "\n" not in message and str(path) in message, (reader, message)
        assert message.endswith("use another checkpoint or train again"), (reader, message)
    assert not (tmp_path / "out").exists()  # refused before any work (eval.py only proved its --results_dir writable)
    assert not (tmp_path / "results").exists() or list((tmp_path / "results").iterdir()) == []


def test_the_undamaged_checkpoint_still_loads_everywhere(trained):
    state, cfg = read_for_scoring(trained[1])
    assert cfg.img_size == 32 and state["step"] == 2
    assert load_checkpoint(trained[1])["format_version"] == 1


# --- flags checked before any work -------------------------------------------------------------------------------

def test_an_unknown_score_stops_train_py_before_the_first_step(trained, tmp_path):
    cfg = trained[0]
    weights = tmp_path / "weights"
    argv = ["--dataset=toy", f"--data_root={cfg.data_root}", f"--weights_dir={weights}", "--img_size=32",
            "--base_channels=8", "--iters=300", "--val_interval=250", "--device=cpu", "--tensorboard=false"]
    with pytest.raises(UserError, match=r"unknown --score 'bogus': valid names are box16, box32, moving, psnr, top1, "
                                        r"top5"):
        train.main([*argv, "--score=bogus"])
    with pytest.raises(UserError, match=r"--score=top5 is a frame score of prediction methods .* --model=skipganomaly "
                                        r"has its own score"):
        train.main([*argv, "--score=top5", "--model=skipganomaly"])
    with pytest.raises(UserError, match=r"unknown --discriminator 'nope'"):
        train.main([*argv, "--discriminator=nope"])
    with pytest.raises(UserError, match=r"unknown --flownet 'flownet3'"):
        train.main([*argv, "--flownet=flownet3"])
    assert not weights.exists()  # nothing started


@pytest.mark.parametrize("flag, words", [
    ("--fps=1e300", r"--fps=1e\+300 is not valid: .*1000"),
    ("--fps=nan", r"--fps=nan is not valid"),
    ("--fps=-5", r"--fps=-5.0 is not valid"),
    ("--run=../../x", r"--run='../../x' must be a single folder name inside --results_dir"),
    ("--run=a/b", r"--run='a/b' must be a single folder name"),
    ("--run=..", r"--run='..' must be a single folder name"),
    ("--run=" + "r" * 300, r"--run is 300 bytes long: give a name of at most 200"),
])
def test_detect_flags_are_checked_before_the_video_is_opened(tmp_path, flag, words):
    with pytest.raises(UserError, match=words):
        detect.main(["--video=/nonexistent.mp4", "--trained_model=x", f"--results_dir={tmp_path}", flag])
    assert list(tmp_path.iterdir()) == []


# --- words that misled ------------------------------------------------------------------------------------------

def test_resuming_a_finished_run_says_there_is_nothing_to_do(trained):
    cfg, path, _ = trained
    with pytest.raises(UserError, match=r"--resume=.*latest_toy.pth has already trained 2 steps, and --iters=2 \(its "
                                        r"own\) leaves nothing to do: pass --iters=N with N > 2 to train on"):
        load_resume_state(cfg.replace(resume=str(path)), {"resume"})
    with pytest.raises(UserError, match=r"has already trained 2 steps, and --iters=1 leaves nothing to do"):
        load_resume_state(cfg.replace(resume=str(path), iters=1), {"resume", "iters"})
    merged, state = load_resume_state(cfg.replace(resume=str(path), iters=3), {"resume", "iters"})
    assert merged.iters == 3 and state["step"] == 2  # training on is still one flag away


def test_resume_with_another_pretrained_is_refused_and_the_same_one_accepted(trained, tmp_path):
    cfg, path, _ = trained
    with pytest.raises(UserError, match=r"--pretrained=other.pth with --resume=.*: a resumed run continues from its "
                                        r"own weights \(it started from fresh weights\); drop --pretrained"):
        load_resume_state(cfg.replace(resume=str(path), pretrained="other.pth", iters=4),
                          {"resume", "pretrained", "iters"})
    merged, _ = load_resume_state(cfg.replace(resume=str(path), pretrained="", iters=4),
                                  {"resume", "pretrained", "iters"})  # the same (none): the command line repeated
    assert merged.pretrained == ""


def test_a_killed_writers_temporary_video_goes_at_the_next_write(tmp_path):
    """A detect killed while it writes annotated.mp4 leaves ``.annotated.mp4.<8>.tmp.mp4`` and, while it adds the
    audio, a temporary file of that temporary file; the next write of annotated.mp4 removes both (they are
    unlocked and older than a few seconds), and never another target's."""
    target = tmp_path / "annotated.mp4"
    outer = tmp_path / ".annotated.mp4.ab12cd34.tmp.mp4"
    nested = tmp_path / "..annotated.mp4.ab12cd34.tmp.mp4.ef56gh78.tmp.mp4"
    other = tmp_path / ".scores.csv.ab12cd34.tmp"
    for path in (outer, nested, other):
        path.write_bytes(b"half a video")
        old = time.time() - 30
        os.utime(path, (old, old))
    with atomic_path(target, keep_extension=True) as tmp:
        tmp.write_bytes(b"a whole video")
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, target.name]


# --- the adversarial pass beyond the list ---------------------------------------------------------------

def _calibration_file(tmp_path: Path, **changes) -> Path:
    import json

    payload = {"kind": "vad-gan-causal-calibration", "psnr_sorted": [30.0, 31.0, 32.0], "n_frames": 3,
               "source": "normal", "optimistic": False, "checkpoint_sha256": "0" * 64, "img_size": 32, **changes}
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(payload))
    return path


@pytest.mark.parametrize("changes, words", [
    (dict(n_frames="many"), r"its n_frames is \"many\""),
    (dict(psnr_sorted=[30.0, "x"]), r"its PSNR values are not a list of finite numbers"),
    (dict(psnr_sorted="30,31"), r"its PSNR values are not a list of finite numbers"),
    (dict(img_size=True), r"its img_size is true"),
    (dict(optimistic="no"), r"its optimistic is \"no\""),
    (dict(videos="v1"), r"its videos are not a list"),
], ids=["n_frames-text", "value-text", "values-a-string", "img_size-bool", "optimistic-text", "videos-a-string"])
def test_a_calibration_with_fields_of_the_wrong_type_is_one_line(tmp_path, changes, words):
    from ffpvad.evaluation.calibration import KIND, Calibration

    path = _calibration_file(tmp_path, kind=KIND, **changes)
    with pytest.raises(UserError, match=words + r".*make it again with detect.py --calibrate"):
        Calibration.load(path)


def test_a_calibration_that_is_a_folder_is_not_to_be_deleted(tmp_path):
    from ffpvad.evaluation.calibration import Calibration

    with pytest.raises(UserError, match=r"is a folder: pass --calibration=<a calibration file>") as info:
        Calibration.load(tmp_path)
    assert "delete" not in str(info.value)


@pytest.mark.parametrize("flags, words", [
    (["--video="], r"--video is empty: give a video file"),
    (["--video=clip.mp4", "--gap=inf"], r"--gap=inf is not valid: a finite number >= 0"),
    (["--video=clip.mp4", "--threshold=nan"], r"--threshold=nan is not valid"),
    (["--video=clip.mp4", "--num_threads=-1"], r"--num_threads=-1 is not valid: an integer >= 0"),
], ids=["empty-video", "gap-inf", "threshold-nan", "threads-negative"])
def test_more_detect_flags_before_any_work(tmp_path, flags, words):
    with pytest.raises(UserError, match=words):
        detect.main([*flags, "--trained_model=x", f"--results_dir={tmp_path}"])


def test_a_weights_folder_that_cannot_be_made_is_not_said_to_have_vanished(small_cfg):
    trainer = Trainer(small_cfg.replace(weights_dir="/proc/ffp-test/weights"), progress=False)
    with pytest.raises(UserError, match=r"cannot write to weights folder /proc/ffp-test/weights \(it cannot be "
                                        r"created there\): choose another --weights_dir") as info:
        trainer.fit()
    assert "no longer" not in str(info.value)


@pytest.mark.parametrize("version, words", [
    (True, r"its format_version is True, not a whole number"),
    (-1, r"its format_version is -1, not a whole number"),
    (99, r"has checkpoint format 99, newer than this code \(1\): update the project"),
])
def test_format_versions_that_were_accepted_or_misread(trained, tmp_path, version, words):
    path = damaged(trained, tmp_path, _set("format_version", version))
    with pytest.raises(UserError, match=words):
        load_checkpoint(path)
