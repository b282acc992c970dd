"""The training loop: alternating updates, gradients, the flow loss, exact resume, checkpoints, the toy floor."""
import copy
import math
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ffpvad import losses
from ffpvad.checkpoint import load_checkpoint
from conftest import ROOT
from ffpvad.data.dataset import to_model_range
from ffpvad.training.engine import Trainer, load_resume_state
from ffpvad.errors import UserError
from test_models import write_official_flownet2sd


def first_batch(trainer):
    ids = trainer.sampler.next_batch()
    return ids, trainer.train_clips.batch(ids)


def test_discriminator_gradients_come_from_the_d_step_only(small_cfg):
    trainer = Trainer(small_cfg.replace(amp="off", channels_last="off"), progress=False)  # fp32: exact reference
    G0, D0 = copy.deepcopy(trainer.generator), copy.deepcopy(trainer.discriminator)
    ids, clips = first_batch(trainer)
    trainer.train_step(ids, clips)

    x = to_model_range(clips)
    prediction = G0(x[:, :-1].flatten(1, 2))
    expected = losses.discriminator_loss(D0(x[:, -1]), D0(prediction.detach()))
    grads = torch.autograd.grad(expected, list(D0.parameters()))
    for (name, p), g in zip(trainer.discriminator.named_parameters(), grads):
        assert torch.allclose(p.grad, g, atol=1e-6), f"the G step changed D's gradient of {name}"
    assert all(p.requires_grad for p in trainer.discriminator.parameters())  # D unfrozen again


def test_flow_loss_alone_reaches_the_generator(small_cfg, tmp_path):
    write_official_flownet2sd(tmp_path / "FlowNet2-SD.pth")
    cfg = small_cfg.replace(flownet="flownet2sd", flownet_weights=str(tmp_path / "FlowNet2-SD.pth"),
                            lam_int=0.0, lam_grad=0.0, lam_adv=0.0, lam_flow=1.0)
    trainer = Trainer(cfg, progress=False)
    ids, clips = first_batch(trainer)
    result = trainer.train_step(ids, clips)
    assert result.g_flow > 0
    grad = sum(p.grad.abs().sum() for p in trainer.generator.parameters() if p.grad is not None)
    assert grad > 0
    assert set(trainer.context.cache["ground_truth_flow"]) == {int(i) for i in ids}  # ground-truth flow computed once, kept
    assert not any(p.requires_grad for p in trainer.flownet.parameters())


def test_resume_with_ema_continues_exactly(small_cfg):
    cfg = small_cfg.replace(ema=0.9)
    straight = Trainer(cfg.replace(iters=7), progress=False)
    history = straight.fit().history

    Trainer(cfg.replace(iters=4), progress=False).fit()
    resumed_cfg, state = load_resume_state(cfg.replace(iters=7, resume="latest_toy"), explicit={"iters"})
    resumed = Trainer(resumed_cfg, resume_from=state, progress=False)
    tail = resumed.fit().history
    assert [s.as_dict() for s in tail] == [s.as_dict() for s in history[4:]]
    for a, b in zip(straight.ema.module.state_dict().values(), resumed.ema.module.state_dict().values()):
        assert torch.equal(a, b)


def test_ema_checkpoint_evaluates_the_average_and_keeps_the_raw_weights(small_cfg, tmp_path):
    trainer = Trainer(small_cfg.replace(ema=0.5, iters=3), progress=False)
    trainer.fit()
    state = load_checkpoint(tmp_path / "weights" / "latest_toy.pth")
    average = trainer.ema.module.state_dict()
    raw = trainer.generator.state_dict()
    assert all(torch.equal(state["generator"][k], average[k]) for k in average)
    assert all(torch.equal(state["generator_raw"][k], raw[k]) for k in raw)
    assert any(not torch.equal(average[k], raw[k]) for k in raw if raw[k].is_floating_point())


def test_ema_warms_up_instead_of_holding_on_to_the_initial_weights(small_cfg):
    trainer = Trainer(small_cfg.replace(ema=0.999, iters=4), progress=False)
    initial = copy.deepcopy(trainer.generator.state_dict())
    trainer.fit()
    raw, average = trainer.generator.state_dict(), trainer.ema.module.state_dict()

    def distance(a, b):
        return sum(float((a[k].float() - b[k].float()).norm()) for k in raw if raw[k].is_floating_point())

    # A fixed 0.999 would leave the average 99.6% initial weights after 4 steps; the warm-up follows the network.
    assert distance(average, raw) < 0.5 * distance(initial, raw)


def test_val_holdout_keeps_videos_out_and_selects_without_test_labels(small_cfg, tmp_path):
    trainer = Trainer(small_cfg.replace(val_holdout=2, val_interval=3, iters=6), progress=False)
    assert trainer.train_clips.videos.names == ["01", "02", "03", "04", "05", "06"]
    assert trainer.holdout.names == ["07", "08"]
    trainer.fit()
    best = trainer.best["g_best_val"]
    assert best.step in (3, 6) and math.isfinite(best.value)
    state = load_checkpoint(tmp_path / "weights" / "g_best_val_toy.pth")
    assert state["step"] == best.step and state["best_val_psnr"] == best.value
    with pytest.raises(UserError, match="--val_holdout=8 leaves no training video"):
        Trainer(small_cfg.replace(val_holdout=8), progress=False)


def test_resume_refuses_a_different_architecture(small_cfg):
    Trainer(small_cfg.replace(iters=1), progress=False).fit()
    with pytest.raises(UserError, match="cannot resume with a different --base_channels=16"):
        load_resume_state(small_cfg.replace(resume="latest_toy", base_channels=16), explicit={"base_channels"})


def test_checkpoint_holds_everything_and_is_written_atomically(small_cfg, tmp_path):
    trainer = Trainer(small_cfg.replace(iters=2), progress=False)
    trainer.fit()
    state = load_checkpoint(tmp_path / "weights" / "latest_toy.pth")
    for key in ("step", "generator", "discriminator", "opt_g", "opt_d", "sched_g", "sched_d", "config", "best_auc",
                "rng", "sampler", "versions", "format_version"):
        assert key in state
    assert state["step"] == 2 and state["config"]["img_size"] == 32
    assert [p.name for p in (tmp_path / "weights").iterdir()] == ["latest_toy.pth"]  # no temp file left behind


def test_ctrl_c_saves_the_latest_checkpoint(small_cfg, tmp_path, monkeypatch):
    trainer = Trainer(small_cfg.replace(iters=10), progress=False)
    real_step, calls = trainer.train_step, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert load_checkpoint(tmp_path / "weights" / "latest_toy.pth")["step"] == 2


def run(script, *args):
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True)


def cli_flags(cfg):
    return [f"--data_root={cfg.data_root}", f"--cache_dir={cfg.cache_dir}", f"--weights_dir={cfg.weights_dir}",
            f"--results_dir={cfg.results_dir}", f"--log_dir={cfg.log_dir}"]


@pytest.mark.parametrize("content", [None, b"", b"PK\x03\x04 truncated zip", "foreign"])
def test_missing_or_corrupt_checkpoint_is_one_clear_line(small_cfg, tmp_path, content):
    path = tmp_path / "weights" / "g_best_auc_toy.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    if content == "foreign":
        torch.save({"model": torch.zeros(2)}, path)
    elif content is not None:
        path.write_bytes(content)
    result = run("eval.py", "--dataset=toy", *cli_flags(small_cfg), "--trained_model=g_best_auc_toy")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    message = result.stderr.strip()
    assert message.count("\n") == 0 and message.startswith("error: ")
    expected = {None: "not found", b"": "cannot read checkpoint", b"PK\x03\x04 truncated zip": "cannot read checkpoint",
                "foreign": "is not a checkpoint of this project"}[content]
    assert expected in message


def test_train_then_eval_from_the_command_line_writes_every_artifact(small_cfg, tmp_path):
    flags = cli_flags(small_cfg) + ["--dataset=toy", "--img_size=32", "--base_channels=8"]
    trained = run("train.py", *flags, "--iters=4", "--val_interval=2", "--batch_size=4")
    assert trained.returncode == 0, trained.stderr
    assert "WITHOUT the flow loss" in trained.stdout
    assert (tmp_path / "tb" / "toy_bs4" / "config.json").exists()
    evaluated = run("eval.py", *cli_flags(small_cfg), "--dataset=toy", "--trained_model=g_best_auc_toy")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "micro AUC" in evaluated.stdout
    folder = tmp_path / "results" / "g_best_auc_toy"
    names = {p.name for p in folder.iterdir()}
    assert {"metrics.json", "scores.csv", "scores.npz", "config.json", "roc.png", "video_01.png"} <= names
    metrics = json.loads((folder / "metrics.json").read_text())
    assert 0 <= metrics["micro_auc"] <= 1 and metrics["n_frames"] == 10 * (160 - 4)
    # what a results table must state beside the AUC: the labels, and how the checkpoint was chosen
    assert metrics["selection"] == "best on test (looks at the test labels)" and metrics["label_source"]
    assert metrics["checkpoint"].endswith("g_best_auc_toy.pth")
    assert len((folder / "scores.csv").read_text().splitlines()) == 1 + 10 * 156

    # --quantize=int8: calibrated on training clips, results beside the float ones, the same frames scored.
    quantized = run("eval.py", *cli_flags(small_cfg), "--dataset=toy", "--trained_model=g_best_auc_toy",
                    "--quantize=int8")
    assert quantized.returncode == 0, quantized.stderr
    assert "int8 (calibrated on 32 training clips)" in quantized.stdout
    int8_metrics = json.loads((tmp_path / "results" / "g_best_auc_toy_int8" / "metrics.json").read_text())
    assert int8_metrics["n_frames"] == metrics["n_frames"] and 0 <= int8_metrics["micro_auc"] <= 1
    float_psnr = np.load(folder / "scores.npz")["psnr"]
    int8_psnr = np.load(tmp_path / "results" / "g_best_auc_toy_int8" / "scores.npz")["psnr"]
    # The same frames predicted alike: per-frame PSNR follows the float model's (a wrong input range or a broken
    # calibration decorrelates it) and stays within a few dB of it.
    assert np.corrcoef(float_psnr, int8_psnr)[0, 1] > 0.9 and abs(float_psnr.mean() - int8_psnr.mean()) < 3
    for bad, expected in (("--quantize=int4", "--quantize=int4 is not valid: choose one of off, int8"),
                          ("--quantize", "--quantize needs a value"),
                          ("--model=copylast", "--quantize=int8: the baseline --model=copylast has no weights")):
        extra = [bad, "--quantize=int8"] if bad.startswith("--model") else [bad, "--trained_model=g_best_auc_toy"]
        refused = run("eval.py", *cli_flags(small_cfg), "--dataset=toy", *extra)
        message = refused.stderr.strip()
        assert refused.returncode == 2 and message.startswith(f"error: {expected}") and "\n" not in message, message


def test_toy_training_detects_the_toy_anomalies(toy_root, tmp_path):
    """A floor a broken loop cannot reach: an untrained U-Net scores about 0.64 and copy-last about 0.72 here."""
    from ffpvad.config import preset
    cfg = preset("toy").replace(data_root=str(toy_root), cache_dir=str(tmp_path / "c"),
                                weights_dir=str(tmp_path / "w"), log_dir=str(tmp_path / "tb"), iters=150,
                                val_interval=150, tensorboard=False, device="cpu")
    summary = Trainer(cfg, progress=False).fit()
    assert summary.best_auc > 0.80, summary.best_auc


def test_training_curves_are_logged_and_a_resumed_run_keeps_them_up_to_its_step(small_cfg):
    from ffpvad.training.runlog import CurveLog
    cfg = small_cfg.replace(iters=4, log_interval=1, val_interval=2, save_interval=2, tensorboard=False)
    Trainer(cfg, progress=False).fit()
    path = Path(cfg.log_dir) / "toy_bs4" / "curves.csv"  # written with --tensorboard=false too
    rows = [line.strip().split(",") for line in CurveLog.read_lines(path)]
    assert [int(r[0]) for r in rows if r[1] == "psnr"] == [1, 2, 3, 4]
    assert [int(r[0]) for r in rows if r[1] == "test_auc"] == [2, 4]
    with open(path, "a") as handle:
        handle.write("9,psnr,3")  # a row cut short by a crash is skipped by the reader
    assert len(CurveLog.read_lines(path)) == len(rows)
    resumed, state = load_resume_state(cfg.replace(iters=6, resume=str(Path(cfg.weights_dir) / "latest_toy.pth")),
                                       {"iters", "resume"})
    state["step"] = 2  # as if the run had been cut off after the checkpoint of step 2
    Trainer(resumed, resume_from=state, progress=False).fit()
    steps = [int(line.split(",")[0]) for line in CurveLog.read_lines(path) if line.split(",")[1] == "psnr"]
    assert steps == [1, 2, 3, 4, 5, 6]  # steps 3-4 of the first run dropped, logged again by the resumed one
