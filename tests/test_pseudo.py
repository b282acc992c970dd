"""Pseudo-anomaly selection (pseudo.py, --val_pseudo=skip): the clips it makes, its AUC by hand, and a training
run that keeps g_best_pseudo from held-out training videos only."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import pseudo
from dataset import VideoSet
from engine import Trainer
from errors import UserError


def test_skipped_clips_cover_every_frame_once_at_three_times_the_speed():
    frames = np.arange(10)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    out = pseudo.skipped(VideoSet(["v"], [frames]), skip=3)
    assert out.names == ["v@skip3+0", "v@skip3+1", "v@skip3+2"]
    assert [list(f[:, 0, 0, 0]) for f in out.frames] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]


def test_pseudo_auc_by_hand():
    holdout = VideoSet(["v"], [np.zeros((9, 2, 2, 3), np.uint8)])
    normal = [np.array([30.0, 31.0, 32.0])]
    worse = lambda videos: [np.full(len(f), 20.0) for f in videos.frames]  # noqa: E731
    assert pseudo.pseudo_auc(normal, worse, holdout) == 1.0  # every pseudo clip predicted worse: separated
    mixed = lambda videos: [np.full(len(f), 31.0) for f in videos.frames]  # noqa: E731
    assert pseudo.pseudo_auc(normal, mixed, holdout) == pytest.approx(0.5)  # ties with the middle one


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
    assert "pseudo-anomaly AUC" in capsys.readouterr().out
    with pytest.raises(UserError, match="add --val_holdout"):
        Trainer(small_cfg.replace(val_pseudo="skip", val_holdout=0), progress=False)
