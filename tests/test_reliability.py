"""Nothing lost, nothing silent: a run that blows up, folders that cannot be written, and the signals that stop a run
(SIGTERM from a scheduler, SIGHUP from a closed terminal, SIGINT to a job started in the background)."""
from __future__ import annotations

import errno
import math
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ffpvad import checkpoint
from ffpvad.checkpoint import load_checkpoint
from conftest import ROOT, signal_once_saved
from ffpvad.training.engine import Trainer, exclusive_run
from ffpvad.errors import UserError

JOB_TIMEOUT_S = 120


def all_finite(state: dict) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


def test_a_run_that_blows_up_stops_before_saving_its_nan_weights(small_cfg):
    # A learning rate multiplied by 1e30 at step 3: the losses are NaN by step 4 (a real run, no mock).
    cfg = small_cfg.replace(iters=30, save_interval=2, lr_decay_step=3, lr_decay_gamma=1e30)
    with pytest.raises(UserError, match=r"step 4: the losses are no longer finite \(.*nan.*\).*last good checkpoint "
                                        r"is .*latest_toy.pth \(step 2\): continue with --resume=latest_toy"):
        Trainer(cfg, progress=False).fit()
    state = load_checkpoint(Path(cfg.weights_dir) / "latest_toy.pth")
    assert state["step"] == 2
    assert all_finite(state["generator"]) and all_finite(state["discriminator"])


def test_non_finite_weights_are_never_written(small_cfg):
    trainer = Trainer(small_cfg.replace(iters=2, save_interval=1), progress=False)
    trainer.fit()
    with torch.no_grad():
        next(trainer.generator.parameters()).fill_(math.inf)
    with pytest.raises(UserError, match=r"weights are no longer finite .*latest_toy.pth was not written"):
        trainer.save("latest")
    assert all_finite(load_checkpoint(trainer.checkpoint_path("latest"))["generator"])


def test_a_weights_dir_that_cannot_be_written_stops_before_the_first_step(small_cfg, tmp_path):
    (tmp_path / "a_file").write_text("x")
    trainer = Trainer(small_cfg.replace(weights_dir=str(tmp_path / "a_file" / "weights")), progress=False)
    with pytest.raises(UserError, match=r"cannot write to .*a_file/weights .*choose another --weights_dir"):
        trainer.fit()
    assert trainer.step == 0  # nothing trained, nothing lost


def test_a_failed_checkpoint_write_names_the_path_and_keeps_the_last_good_one(small_cfg, monkeypatch):
    trainer = Trainer(small_cfg.replace(iters=6, save_interval=2), progress=False)
    real_save, calls = checkpoint.save_checkpoint, []

    def disk_full_on_the_second(path, payload):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(path, payload)

    monkeypatch.setattr("ffpvad.training.engine.save_checkpoint", disk_full_on_the_second)
    with pytest.raises(UserError, match=r"cannot write checkpoint .*latest_toy.pth \(the disk is full: .* free there\): free some space.*"
                                        r"last good checkpoint is .*latest_toy.pth \(step 2\)"):
        trainer.fit()
    assert load_checkpoint(trainer.checkpoint_path("latest"))["step"] == 2
    assert [p.name for p in Path(small_cfg.weights_dir).iterdir()] == ["latest_toy.pth"]  # no temporary left


def test_a_second_run_on_the_same_weights_folder_is_refused(small_cfg):
    weights = Path(small_cfg.weights_dir)
    weights.mkdir(parents=True)
    with exclusive_run(weights, "toy"):  # a first run holds the folder
        with pytest.raises(UserError, match=r"another training run \(pid \d+\) is writing the toy checkpoints in "
                                            r".*: wait for it to end, or pass another --weights_dir"):
            Trainer(small_cfg, progress=False).fit()
    Trainer(small_cfg.replace(iters=1), progress=False).fit()  # released with the first run, however it ended
    with exclusive_run(weights, "ped2"):  # another dataset's checkpoints are other files
        Trainer(small_cfg.replace(iters=1), progress=False).fit()


def _train_in_background(cfg, ignore_sigint: bool) -> subprocess.Popen:
    flags = [f"--data_root={cfg.data_root}", f"--cache_dir={cfg.cache_dir}", f"--weights_dir={cfg.weights_dir}",
             f"--log_dir={cfg.log_dir}", "--dataset=toy", "--img_size=32", "--base_channels=8", "--iters=100000",
             "--val_interval=0", "--save_interval=2", "--batch_size=2", "--tensorboard=false", "--device=cpu"]

    def start() -> None:  # what `python train.py &` gets from a shell without job control
        # the test's own run may have been started with nohup (SIGHUP ignored, inherited): a terminal's job has not
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN if ignore_sigint else signal.SIG_DFL)

    return subprocess.Popen([sys.executable, "train.py", *flags], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=start)


@pytest.mark.parametrize("signum, ignore_sigint", [(signal.SIGTERM, False), (signal.SIGHUP, False),
                                                   (signal.SIGINT, True)], ids=["SIGTERM", "SIGHUP", "SIGINT-bg"])
def test_a_stop_signal_saves_a_whole_step_and_says_how_to_resume(small_cfg, signum, ignore_sigint):
    weights = Path(small_cfg.weights_dir)
    process = _train_in_background(small_cfg, ignore_sigint)
    stdout, stderr = signal_once_saved(process, weights / "latest_toy.pth", signum, JOB_TIMEOUT_S)
    name = signal.Signals(signum).name
    assert process.returncode == 128 + signum, stderr[-3000:]
    assert stderr.strip().endswith(f"interrupted ({name})") and "Traceback" not in stderr
    lines = [line for line in stdout.splitlines() if line.startswith("interrupted at step")]
    assert len(lines) == 1, stdout
    step = int(lines[0].split()[3].rstrip(":"))
    assert "continue with --resume=latest_toy" in lines[0]
    assert sorted(p.name for p in weights.iterdir()) == ["latest_toy.pth"]  # no temporary left
    assert load_checkpoint(weights / "latest_toy.pth")["step"] == step >= 2


def test_resuming_weights_that_do_not_fit_is_one_short_line(small_cfg):
    from ffpvad.training.engine import load_resume_state

    Trainer(small_cfg.replace(iters=1, save_interval=1), progress=False).fit()
    path = Path(small_cfg.weights_dir) / "latest_toy.pth"
    state = load_checkpoint(path)
    state["config"]["base_channels"] = 4  # the file's weights are width 8
    torch.save(state, path)
    cfg, state = load_resume_state(small_cfg.replace(iters=2, base_channels=4, resume="latest_toy"), {"iters"})
    with pytest.raises(UserError) as info:
        Trainer(cfg, resume_from=state, progress=False)
    message = str(info.value)
    assert re.search(r"--resume=latest_toy: \d+ generator layers do not match this configuration \(inc\.0\.weight "
                     r"\(4, 12, 3, 3\) vs \(8, 12, 3, 3\); .*, and \d+ more\): resume it with the configuration it "
                     r"was trained with", message), message
    assert "\n" not in message and message.count(";") == 2  # three layers named, not hundreds


def test_a_full_disk_during_a_checkpoint_write_is_an_oserror(monkeypatch, tmp_path):
    """torch's own file writer reports a full disk as a RuntimeError about 'inline_container'; written through a
    Python file it is the OSError (ENOSPC) that Trainer.save turns into one line."""
    import contextlib

    @contextlib.contextmanager
    def to_a_full_disk(path, suffix="", **_):
        yield Path("/dev/full")

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    monkeypatch.setattr(checkpoint, "atomic_path", to_a_full_disk)
    with pytest.raises(OSError) as info:
        checkpoint.save_checkpoint(tmp_path / "x.pth", {"weights": torch.zeros(1 << 20)})
    assert info.value.errno == errno.ENOSPC


def test_nohup_keeps_sighup_ignored_and_a_background_sigint_is_caught():
    from ffpvad.errors import install_stop_signals

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nohup
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # python train.py & (no job control)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        install_stop_signals()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def test_auto_contradicts_no_checkpoint_value(small_cfg):
    from ffpvad.checkpoint import architecture_conflicts

    stored = small_cfg.replace(flownet="lucaskanade", model="f2lm")
    given = small_cfg.replace(flownet="auto", model="ffp")
    assert architecture_conflicts(stored, given, {"flownet", "model"}, ("model", "flownet")) == [
        "--model=ffp (checkpoint: f2lm)"]
