"""Frame scores (ffpvad/evaluation/scores.py, --score=): hand-made error maps with known answers, causality in a stream, and the
command lines that take --score."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from ffpvad.checkpoint import save_checkpoint
from conftest import ROOT
from ffpvad.evaluation.metrics import psnr
from ffpvad.evaluation.scores import SCORES, frame_score

LOCAL = ("box16", "box32", "top5", "top1")


def frames_with(error: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(prediction, target) in [-1, 1] whose squared error on [0, 1] is ``error`` (H, W) in every channel."""
    prediction = torch.zeros(1, 3, *error.shape)
    target = prediction + 2 * torch.from_numpy(np.sqrt(error)).float()  # ((t - p) / 2)^2 = error
    return prediction, target


def test_a_hot_patch_outranks_a_uniformly_worse_frame_for_local_scores_but_not_for_psnr():
    uniform = np.full((64, 64), 0.01)  # every pixel a little wrong: mean 0.01
    patch = np.zeros((64, 64))
    patch[20:36, 30:46] = 0.1  # one 16x16 object badly predicted: mean 0.1 / 16 = 0.00625 < 0.01
    (p_u, t_u), (p_p, t_p) = frames_with(uniform), frames_with(patch)
    for name in ("psnr", *LOCAL):
        score = frame_score(name)
        u, h = float(score(p_u, t_u, t_u)[0]), float(score(p_p, t_p, t_p)[0])  # dB: lower = more anomalous
        if name == "psnr":
            assert u < h, name  # the whole-frame mean calls the uniform frame worse
            assert u == pytest.approx(20.0) and h == pytest.approx(10 * np.log10(1 / 0.00625), abs=1e-4)
        else:
            assert h < u, name  # the local scores call the patch worse
    # the values by hand: box16 and top1/top5 see the patch's own error, box32 a quarter of it
    assert float(frame_score("box16")(p_p, t_p, t_p)[0]) == pytest.approx(10.0, abs=1e-4)
    assert float(frame_score("top1")(p_p, t_p, t_p)[0]) == pytest.approx(10.0, abs=1e-4)
    assert float(frame_score("box32")(p_p, t_p, t_p)[0]) == pytest.approx(10 * np.log10(1 / 0.025), abs=1e-4)


def test_moving_weights_the_error_where_the_scene_changed():
    patch = np.zeros((64, 64))
    patch[20:36, 30:46] = 0.1
    prediction, target = frames_with(patch)
    static = frame_score("moving")(prediction, target, target)  # nothing moved: the plain mean (PSNR)
    assert float(static[0]) == pytest.approx(float(psnr(prediction, target)[0]), abs=1e-3)
    previous = target.clone()
    previous[..., 20:36, 30:46] -= 1.0  # the patch is where the scene changed
    moved = frame_score("moving")(prediction, target, previous)
    assert float(moved[0]) < float(static[0]) - 5  # its error now dominates
    uniform_p, uniform_t = frames_with(np.full((64, 64), 0.01))
    assert float(moved[0]) < float(frame_score("moving")(uniform_p, uniform_t, uniform_t)[0])


def test_psnr_score_is_the_papers_psnr_bit_for_bit():
    torch.manual_seed(0)
    prediction, target = torch.rand(4, 3, 32, 32) * 2 - 1, torch.rand(4, 3, 32, 32) * 2 - 1
    assert torch.equal(frame_score("psnr")(prediction, target, target), psnr(prediction, target))


def test_no_score_looks_at_a_later_frame(small_cfg):
    """A stream's scores up to frame t are the same whatever comes after t, for every registered score."""
    from ffpvad.models import build_generator
    from ffpvad.detection.predictor import StreamPredictor
    from ffpvad.inference import Inference
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(20)]
    changed = frames[:12] + [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(8)]
    for name in SCORES.names():
        cfg = small_cfg.replace(score=name, eval_batch_size=3)
        generator = build_generator(cfg).eval()
        ctx = Inference(generator, cfg, torch.device("cpu"))
        run = lambda seq: [p.psnr for p in StreamPredictor(ctx, maps=False).run(seq)]  # noqa: E731
        a, b = run(frames), run(changed)
        assert a[:12] == b[:12], name
        assert a[12:] != b[12:], name  # and the later frames do change the later scores


def test_eval_takes_a_score_and_keeps_the_psnr_results_beside_it(small_cfg, tmp_path):
    from ffpvad.models import build_generator
    cfg = small_cfg.replace(weights_dir=str(tmp_path / "weights"))
    save_checkpoint(tmp_path / "weights" / "g_best_auc_toy.pth",
                    {"step": 1, "generator": build_generator(cfg).state_dict(), "config": cfg.__dict__})
    flags = [f"--data_root={cfg.data_root}", f"--cache_dir={cfg.cache_dir}", f"--weights_dir={cfg.weights_dir}",
             f"--results_dir={tmp_path / 'results'}", "--dataset=toy", "--trained_model=g_best_auc_toy",
             "--plots=false"]
    done = subprocess.run([sys.executable, "eval.py", *flags, "--score=top5"], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((tmp_path / "results" / "g_best_auc_toy_top5" / "metrics.json").read_text())
    assert metrics["frame_score"] == "top5" and 0 <= metrics["micro_auc"] <= 1
    bad = subprocess.run([sys.executable, "eval.py", *flags, "--score=nope"], cwd=ROOT, capture_output=True,
                         text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "unknown --score 'nope'" in bad.stderr and "box16" in bad.stderr
