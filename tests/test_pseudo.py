"""Pseudo-anomalies (ffpvad/data/pseudo.py): the clips selection makes, its AUC and gap by hand, a training run that keeps
g_best_pseudo from held-out training videos only; --pseudo_anomaly=skip's training clips, its loss and its errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import load_tool
from ffpvad import losses
from ffpvad.data import pseudo
from ffpvad.data.dataset import VideoSet, strided_window_start
from ffpvad.training.engine import Trainer
from ffpvad.errors import UserError


def test_skipped_clips_cover_every_frame_once_at_three_times_the_speed():
    frames = np.arange(10)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    out = pseudo.skipped(VideoSet(["v"], [frames]), skip=3)
    assert out.names == ["v@skip3+0", "v@skip3+1", "v@skip3+2"]
    assert [list(f[:, 0, 0, 0]) for f in out.frames] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]


def test_pseudo_auc_and_gap_by_hand():
    holdout = VideoSet(["v"], [np.zeros((9, 2, 2, 3), np.uint8)])
    normal = [np.array([30.0, 31.0, 32.0])]
    worse = lambda videos: [np.full(len(f), 20.0) for f in videos.frames]  # noqa: E731
    figures = pseudo.pseudo_figures(normal, worse, holdout)
    assert figures["auc"] == 1.0  # every pseudo clip predicted worse: separated
    assert figures["gap_db"] == pytest.approx(11.0)  # 31 dB mean against 20: the gap goes on where the AUC stops
    mixed = lambda videos: [np.full(len(f), 31.0) for f in videos.frames]  # noqa: E731
    figures = pseudo.pseudo_figures(normal, mixed, holdout)
    assert figures["auc"] == pytest.approx(0.5) and figures["gap_db"] == pytest.approx(0.0)  # ties the middle one


def test_training_keeps_g_best_pseudo_from_held_out_training_videos_only(small_cfg, monkeypatch, capsys):
    seen = []
    original = pseudo.skipped
    monkeypatch.setattr(pseudo, "skipped", lambda videos, skip=pseudo.SKIP: seen.extend(videos.names)
                        or original(videos, skip))
    cfg = small_cfg.replace(iters=4, val_interval=2, val_holdout=2, val_pseudo="skip")
    trainer = Trainer(cfg, progress=False)
    trainer.fit()
    held_out = list(trainer.holdout.names)  # the last two videos of the training split, never a test video
    assert seen and set(seen) == set(held_out) and len(held_out) == 2
    assert (Path(cfg.weights_dir) / "g_best_pseudo_toy.pth").exists()
    out = capsys.readouterr().out
    assert "pseudo-anomaly AUC" in out and "gap" in out
    with pytest.raises(UserError, match="add --val_holdout"):
        Trainer(small_cfg.replace(val_pseudo="skip", val_holdout=0), progress=False)


@pytest.mark.parametrize("statistic", ["skip", "skip_gap"])
def test_g_best_pseudo_follows_the_named_statistic(small_cfg, monkeypatch, statistic):
    """Validations see AUC 1.0, 1.0 and gaps 2, 5 dB: skip keeps the first (the AUC does not rise), skip_gap the
    second."""
    figures = iter([{"auc": 1.0, "gap_db": 2.0}, {"auc": 1.0, "gap_db": 5.0}])
    monkeypatch.setattr("ffpvad.training.engine.pseudo_figures", lambda *args, **kwargs: next(figures))
    trainer = Trainer(small_cfg.replace(iters=4, val_interval=2, val_holdout=2, val_pseudo=statistic),
                      progress=False)
    trainer.fit()
    assert trainer.best["g_best_pseudo"].step == {"skip": 2, "skip_gap": 4}[statistic]


def test_strided_window_stays_inside_the_video():
    assert strided_window_start(0, 20, 5, 3) == 0
    assert strided_window_start(10, 20, 5, 3) == 7  # 7 + 3 * 4 = 19, the last frame
    assert strided_window_start(0, 12, 5, 3) == -1  # 13 frames needed


def test_pseudo_anomaly_training_clips_are_strided_training_frames_and_the_loss_targets_the_last_input(
        small_cfg, monkeypatch):
    cfg = small_cfg.replace(iters=1, pseudo_anomaly="skip", val_holdout=2)
    trainer = Trainer(cfg, progress=False)
    clips = trainer.train_clips
    ids = np.array([0, len(clips) - 1, 3, 5])
    made = trainer.context.pseudo_clips(ids)
    assert made.shape[0] == 2  # the first half of the batch
    for k, clip_id in enumerate(ids[:2]):
        v, start = clips.index[clip_id]
        video = clips.videos.frames[v]  # a training video: held-out and test videos are not in train_clips
        first = strided_window_start(int(start), len(video), cfg.clip_len, pseudo.SKIP)
        expected = torch.from_numpy(np.array(video[first:first + 13:3])).movedim(-1, -3).float() / 127.5 - 1
        assert torch.equal(made[k], expected)
    assert not set(trainer.holdout.names) & set(clips.videos.names)

    targets = []
    real_intensity = losses.intensity_loss
    monkeypatch.setattr(losses, "intensity_loss", lambda prediction, target: targets.append(target.detach().clone())
                        or real_intensity(prediction, target))
    out = trainer.train_step(ids, clips.batch(ids))
    assert out.g_pseudo > 0
    assert len(targets) == 2  # the batch's normal targets, then the pseudo clips' last input frames
    assert targets[0].shape[0] == len(ids) and torch.equal(targets[1], made[:, -2])


def test_pseudo_anomaly_refused_where_it_cannot_train(small_cfg):
    with pytest.raises(UserError, match="built for the frame-prediction method"):
        Trainer(small_cfg.replace(model="skipganomaly", pseudo_anomaly="skip"), progress=False)
    short = small_cfg.replace(pseudo_anomaly="skip", clip_len=60)
    with pytest.raises(UserError, match=r"needs 178 frames per training video"):
        Trainer(short, progress=False)


def test_selection_table_picks_each_rule_from_the_curves(tmp_path, capsys, monkeypatch):
    """tools/selection_table.py: the first step with the best figure, the last validation, the oracle, and the
    macro AUC / EER from summary.json where that rule's checkpoint was evaluated."""
    import json
    import sys

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "tools"))
    load_tool("score_table")  # selection_table imports its neighbour by name
    selection_table = load_tool("selection_table")

    run = tmp_path / "run"
    (run / "logs" / "ped2_bs4").mkdir(parents=True)
    rows = {250: (30.0, 2.0, 1.0, 0.80), 500: (31.0, 3.0, 1.0, 0.90), 750: (31.0, 2.5, 0.99, 0.85)}
    lines = [f"{step},{name},{value}" for step, values in rows.items()
             for name, value in zip(("holdout_psnr", "pseudo_gap_db", "pseudo_auc", "test_auc"), values)]
    (run / "logs" / "ped2_bs4" / "curves.csv").write_text("step,name,value\n" + "\n".join(lines) + "\n")
    (run / "summary.json").write_text(json.dumps({"label_free": {"macro_auc": 0.95, "eer": 0.1},
                                                  "best_on_test": {"macro_auc": 0.96, "eer": 0.09}}))
    monkeypatch.setattr(sys, "argv", ["selection_table.py", f"--group=g={run}"])
    assert selection_table.main() == 0
    table = {line.split(" | ")[1]: line.split(" | ")[2:] for line in capsys.readouterr().out.splitlines()[2:]}
    assert table["held-out PSNR"][:4] == ["90.00%", "500", "95.00%", "10.00% |"]  # first of the tied 31 dB
    assert table["pseudo AUC (skip)"][:2] == ["80.00%", "250"]  # saturated at 1.0: the first step
    assert table["pseudo gap (skip_gap)"][:2] == ["90.00%", "500"]
    assert table["last"][:2] == ["85.00%", "750"]
    assert table["best on test (oracle)"][:4] == ["90.00%", "500", "96.00%", "9.00% |"]


def test_selection_rules_restore_only_a_best_of_the_same_statistic_and_name_the_rule():
    from types import SimpleNamespace

    from ffpvad.training import selection

    best = selection.fresh()["g_best_pseudo"]
    best.restore({"best_pseudo": 3.5, "best_pseudo_step": 40, "best_pseudo_rule": "skip_gap"},
                 SimpleNamespace(val_pseudo="skip"))
    assert (best.value, best.step) == (float("-inf"), -1)  # a gap in dB is no AUC: the skip rule starts again
    best.restore({"best_pseudo_auc": 0.75, "best_pseudo_step": 20}, SimpleNamespace(val_pseudo="skip"))
    assert (best.value, best.step) == (0.75, 20)  # a checkpoint from before the rule was recorded: skip, old key
    assert best.record(SimpleNamespace(val_pseudo="skip")) == {"best_pseudo": 0.75, "best_pseudo_step": 20,
                                                               "best_pseudo_rule": "skip"}
    assert not best.improves(0.7, 30) and best.improves(0.8, 30) and best.step == 30
    assert selection.describe("weights/g_best_val_ped2.pth") == "held-out PSNR (no test labels)"
    assert selection.describe("g_best_auc_ped2") == "best on test (looks at the test labels)"
    assert selection.describe("latest_ped2.pth") == "last checkpoint"
    assert selection.describe("mine.pth") == "as named (mine)"
