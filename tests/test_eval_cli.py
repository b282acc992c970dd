"""eval.py's refusals (issue #20): a results folder that cannot be written is one line before anything is
evaluated; a checkpoint of another model, or whose weights do not fit its config, and a corrupt label mask are one
line each; metrics.json names the single-class videos."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import ROOT
from ffpvad.errors import UserError

FIX = "choose another with --results_dir"


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)  # eval.main's configure_threads sets it for the whole process


def data_flags(cfg, results_dir) -> list[str]:
    return [f"--data_root={cfg.data_root}", f"--cache_dir={cfg.cache_dir}", f"--weights_dir={cfg.weights_dir}",
            f"--results_dir={results_dir}", "--dataset=toy", "--img_size=32", "--plots=false", "--num_threads=1",
            "--eval_batch_size=64"]


def eval_refuses(argv: list[str]) -> str:
    from ffpvad.commands import eval as eval_cli

    with pytest.raises(UserError) as info:
        eval_cli.main(argv)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# --- a results folder that cannot be written: one line, before the model loads or a frame is decoded --------------

def test_a_results_dir_that_is_a_file_is_refused_before_any_frame_is_read(small_cfg, tmp_path):
    blocker = tmp_path / "results_file"
    blocker.write_text("a file where the results folder should be")
    for results_dir, why in ((blocker, "it is a file, not a folder"),
                             (blocker / "runs", f"{blocker} is a file, not a folder")):
        message = eval_refuses(data_flags(small_cfg, results_dir) + ["--model=copylast"])
        assert message == f"cannot write results folder {results_dir} ({why}): {FIX}"
    assert not os.path.exists(small_cfg.cache_dir)  # no frame decoded: the test set was never loaded


def test_a_run_folder_that_is_a_file_is_refused_before_any_frame_is_read(small_cfg, tmp_path):
    """The run's name (here the baseline's, toy_copylast) is known once the model is chosen: checked then."""
    results = tmp_path / "r"
    results.mkdir()
    (results / "toy_copylast").write_text("a file where the run folder should be")
    message = eval_refuses(data_flags(small_cfg, results) + ["--model=copylast"])
    assert message == f"cannot write results folder {results / 'toy_copylast'} (it is a file, not a folder): {FIX}"
    assert not os.path.exists(small_cfg.cache_dir)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="running as root: permission bits do not stop root's writes, so no read-only folder exists")
def test_a_results_dir_under_a_read_only_folder_is_refused(small_cfg, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        message = eval_refuses(data_flags(small_cfg, locked / "results") + ["--model=copylast"])
    finally:
        locked.chmod(0o755)
    assert message == f"cannot write results folder {locked / 'results'} (Permission denied): {FIX}"
    assert not os.path.exists(small_cfg.cache_dir)


def test_the_command_line_prints_it_as_one_error_line(small_cfg, tmp_path):
    blocker = tmp_path / "results_file"
    blocker.write_text("")
    run = subprocess.run([sys.executable, "eval.py", *data_flags(small_cfg, blocker), "--model=copylast"], cwd=ROOT,
                         capture_output=True, text=True)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr == f"error: cannot write results folder {blocker} (it is a file, not a folder): {FIX}\n"


# --- checkpoints that do not fit ------------------------------------------------------------------------------------

def test_model_flag_against_a_checkpoint_of_another_model_is_one_line(small_cfg, tmp_path):
    from ffpvad.training.engine import Trainer

    Trainer(small_cfg.replace(model="stemgan", iters=1), progress=False).fit()
    checkpoint = tmp_path / "weights" / "latest_toy.pth"
    assert checkpoint.is_file()
    message = eval_refuses(data_flags(small_cfg, tmp_path / "results")
                           + ["--model=ffp", f"--trained_model={checkpoint}"])
    assert message.startswith(f"{checkpoint} was trained with other settings than --model=ffp (checkpoint: "
                              f"stemgan)"), message
    assert message.endswith("or pass another --trained_model")


def test_weights_that_do_not_fit_their_config_are_one_short_line(small_cfg, tmp_path):
    from ffpvad.checkpoint import save_checkpoint, weights_mismatch
    from ffpvad.models import build_generator

    narrow = build_generator(small_cfg.replace(base_channels=4))
    checkpoint = tmp_path / "weights" / "mislabelled.pth"
    save_checkpoint(checkpoint, {"generator": narrow.state_dict(), "config": small_cfg.__dict__})  # says 8
    rows = weights_mismatch(build_generator(small_cfg), narrow.state_dict())
    assert len(rows) > 3  # enough for the summary to matter
    message = eval_refuses(data_flags(small_cfg, tmp_path / "results") + [f"--trained_model={checkpoint}"])
    assert message.startswith(f"{checkpoint}: {len(rows)} generator layers do not match this configuration (")
    assert "; ".join(rows[:3]) in message and f", and {len(rows) - 3} more)" in message
    assert rows[3] not in message and message.count(" vs ") == 3  # three layers named with their shapes, no more
    assert message.endswith(f"it is not a --model=ffp of width {small_cfg.base_channels} on {small_cfg.clip_len}-"
                            f"frame clips"), message
    assert len(message) < 400


# --- labels ----------------------------------------------------------------------------------------------------------

def test_a_pickled_frame_mask_given_with_labels_is_one_line_naming_it(small_cfg, tmp_path, restore_threads):
    """tests/test_prepare.py checks the reader (labels.load_labels); this is the same file through eval.py --labels."""
    from ffpvad.data.dataset import VideoSet

    videos = VideoSet.load(small_cfg, "testing")
    masks = tmp_path / "test_frame_mask"
    masks.mkdir()
    for name, count in zip(videos.names, videos.counts):
        np.save(masks / f"{name}.npy", np.zeros(count, np.uint8))
    corrupt = masks / f"{videos.names[1]}.npy"
    np.save(corrupt, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    message = eval_refuses(data_flags(small_cfg, tmp_path / "results") + ["--model=copylast", f"--labels={masks}"])
    assert message.startswith(f"cannot read frame mask {corrupt} as .npy ("), message
    assert "allow_pickle" not in message and "prepare the dataset again" in message


# --- metrics.json ----------------------------------------------------------------------------------------------------

def test_metrics_json_names_the_single_class_videos(small_cfg, tmp_path):
    """Video '14' (index 2 here) is anomalous throughout: metrics.json names it, the summary still counts it."""
    from ffpvad.evaluation.evaluate import EvalResult, summary_table, write_results
    from ffpvad.evaluation.metrics import metrics_of_scores

    rng = np.random.default_rng(0)
    labels = [np.r_[np.zeros(6), np.ones(4)].astype(np.int64), np.r_[np.ones(3), np.zeros(7)].astype(np.int64),
              np.ones(10, np.int64)]
    scores = [rng.random(10) for _ in labels]
    result = EvalResult(metrics_of_scores(scores, labels), [30 - 10 * s for s in scores], scores, labels)
    test_set = SimpleNamespace(videos=SimpleNamespace(names=["12", "13", "14"]), label_source="labels.csv")
    write_results(tmp_path / "run", result, test_set, small_cfg, {}, plots=False)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["macro_single_class_videos"] == ["14"]
    assert metrics["macro_videos_used"] == 2
    assert "over 2 videos (1 single-class videos excluded)" in summary_table(result, "toy")
