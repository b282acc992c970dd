"""A full disk, a read-only mount and a folder that vanished, on every write path of training, evaluation and
detection: one line naming the file, the reason in words and what to do; exit 2, no traceback, no temporary file
left, the last good file kept.

The real cases run on a small tmpfs mounted for the test (root on Linux; skipped, saying why, where mounting is not
allowed); the fault-injection cases make the underlying write raise ENOSPC, so they run everywhere."""
from __future__ import annotations

import errno
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ffpvad import checkpoint
from ffpvad import ioutil
from ffpvad.checkpoint import load_checkpoint, save_checkpoint
from conftest import ROOT
from ffpvad.training.engine import Trainer
from ffpvad.errors import UserError, WriteFailed, run_cli

TMPFS_BYTES = 8 * 2**20  # two toy checkpoints of 2.8 MB (width 8, 32 px, with their optimisers)


class SmallDisk:
    """A tmpfs of TMPFS_BYTES at ``path``: ``fill(leave)`` leaves about ``leave`` bytes free, ``read_only()``
    remounts it read-only."""

    def __init__(self, path: Path):
        self.path = path
        self.filler = path / "filler"

    def fill(self, leave: int = 0) -> None:
        free = shutil.disk_usage(self.path).free
        with open(self.filler, "ab") as handle:
            try:
                handle.write(b"\0" * max(0, free - leave))
            except OSError:
                pass

    def free(self) -> int:
        return shutil.disk_usage(self.path).free

    def read_only(self) -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(self.path)], check=True, capture_output=True)


@pytest.fixture
def disk(tmp_path):
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if not sys.platform.startswith("linux") or shutil.which("mount") is None:
        pytest.skip("no Linux mount here: the real full-disk cases need a small tmpfs (the fault-injection ones run)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not root'}): the real full-disk cases need "
                    f"one (the fault-injection ones run)")
    try:
        yield SmallDisk(mount_point)
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "filler") if folder.is_dir() else []


# --- training ---------------------------------------------------------------------------------------------------

def test_a_full_disk_at_a_checkpoint_is_one_line_and_keeps_the_last_good_one(small_cfg, disk, monkeypatch):
    weights = disk.path / "weights"
    trainer = Trainer(small_cfg.replace(weights_dir=str(weights), iters=6, save_interval=2), progress=False)
    real_save = checkpoint.save_checkpoint

    def fill_after_the_first(path, payload):  # the disk fills up between the first and the second save
        real_save(path, payload)
        disk.fill(leave=4096)

    monkeypatch.setattr("ffpvad.training.engine.save_checkpoint", fill_after_the_first)
    with pytest.raises(UserError) as info:
        trainer.fit()
    message = str(info.value)
    assert "\n" not in message
    assert f"cannot write checkpoint {weights / 'latest_toy.pth'} (the disk is full: " in message
    assert "free some space or choose another --weights_dir" in message
    assert "The last good checkpoint is" in message and "(step 2): continue with --resume=latest_toy" in message
    assert load_checkpoint(weights / "latest_toy.pth")["step"] == 2  # the good one is whole
    assert leftovers(weights) == ["latest_toy.pth"]  # and no temporary file beside it


def test_train_py_on_a_full_disk_exits_2_with_one_line(small_cfg, disk):
    disk.fill(leave=8192)
    cfg = small_cfg
    result = subprocess.run(
        [sys.executable, "train.py", f"--data_root={cfg.data_root}", f"--cache_dir={cfg.cache_dir}",
         f"--weights_dir={disk.path / 'weights'}", f"--log_dir={cfg.log_dir}", "--dataset=toy", "--img_size=32",
         "--base_channels=8", "--iters=2", "--val_interval=0", "--save_interval=1", "--batch_size=2",
         "--tensorboard=false", "--device=cpu", "--num_threads=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "inline_container" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot write checkpoint ") and "(the disk is full: " in last
    assert leftovers(disk.path / "weights") == []


def test_a_read_only_weights_folder_stops_before_the_first_step_and_does_not_blame_space(small_cfg, disk):
    (disk.path / "weights").mkdir()
    disk.read_only()
    trainer = Trainer(small_cfg.replace(weights_dir=str(disk.path / "weights")), progress=False)
    with pytest.raises(UserError) as info:
        trainer.fit()
    assert trainer.step == 0
    message = str(info.value)
    assert "(the file system is read-only): choose another --weights_dir" in message
    assert "space" not in message


# --- evaluation and detection -----------------------------------------------------------------------------------

@pytest.fixture
def trained(small_cfg):
    """A checkpoint of two steps (its test videos are the toy set's)."""
    cfg = small_cfg.replace(iters=2)
    Trainer(cfg, progress=False).fit()
    return cfg, Path(cfg.weights_dir) / "latest_toy.pth"


def test_eval_on_a_full_results_disk_prints_the_metrics_then_one_line(trained, disk, capsys):
    from ffpvad.commands import eval as eval_cli

    cfg, path = trained
    results = disk.path / "results"
    results.mkdir()
    disk.fill(leave=2048)
    with pytest.raises(SystemExit) as code:
        run_cli(lambda: eval_cli.main(["--dataset=toy", f"--data_root={cfg.data_root}", f"--cache_dir={cfg.cache_dir}",
                                       f"--trained_model={path}", f"--results_dir={results}", "--device=cpu",
                                       "--num_threads=1", "--plots=false"]))
    out, err = capsys.readouterr()
    assert code.value.code == 2
    assert "AUC" in out  # computed and shown before the write that failed: nothing computed is lost
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "(the disk is full: " in err and "free some space or choose another with --results_dir" in err
    run_folder = next(results.iterdir())
    assert [p for p in run_folder.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_detect_on_a_full_or_read_only_disk_is_one_line(disk, tmp_path):
    from ffpvad.commands import detect
    from test_detect import scene, train_tiny, write_mp4
    from ffpvad.config import preset

    cfg = preset("ped2").replace(img_size=32, base_channels=8, flownet="none", device="cpu", amp="off",
                                 channels_last="off")
    save_checkpoint(tmp_path / "tiny.pth", {"step": 1, "generator": train_tiny(cfg, scene(40, 1), steps=2)
                                            .state_dict(), "config": cfg.__dict__})
    video = write_mp4(tmp_path / "clip.mp4", scene(30, 2))
    args = [f"--video={video}", f"--trained_model={tmp_path / 'tiny.pth'}", "--progress=false", "--num_threads=1"]
    disk.fill(leave=8192)
    with pytest.raises(WriteFailed, match=r"cannot write .*/full/annotated.mp4 \(the disk is full: .* free there\): "
                                          r"free some space or choose another with --output or --results_dir"):
        detect.main([*args, f"--output={disk.path / 'full'}"])
    assert leftovers(disk.path / "full") == []
    disk.read_only()
    with pytest.raises(UserError, match=r"cannot write to output folder .*/ro \(the file system is read-only\): "
                                        r"choose another with --output"):
        detect.main([*args, f"--output={disk.path / 'ro'}"])


def test_a_calibration_on_a_full_disk_names_the_flag(disk):
    from ffpvad.evaluation.calibration import from_psnr

    result = from_psnr([30.0 + k % 7 for k in range(200)], "normal", "0" * 64, 32, optimistic=False, videos=["v"])
    disk.fill(leave=0)
    with pytest.raises(WriteFailed, match=r"cannot write calibration .*cal.json \(the disk is full: .*\): free some "
                                          r"space or pass --calibration=<writable path>"):
        result.save(disk.path / "cal.json", "tiny.pth")
    assert leftovers(disk.path) == []


# --- a folder that vanished, and fault injection (everywhere) --------------------------------------------------

def test_a_folder_removed_while_its_file_is_written_is_said_so(tmp_path):
    folder = tmp_path / "run"
    with pytest.raises(WriteFailed, match=r"cannot write .*run/summary.json \(its folder .*run no longer exists\)"):
        with ioutil.atomic_path(folder / "summary.json") as tmp:
            tmp.write_text("{}")
            shutil.rmtree(folder)  # another process cleaned the results folder meanwhile


class FullAfter(io.RawIOBase):
    """A binary file whose writes fail with ENOSPC once ``capacity`` bytes are written (a disk filling up)."""

    def __init__(self, capacity: int):
        self.capacity, self.written = capacity, 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if self.written + len(data) > self.capacity:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += len(data)
        return len(data)


@pytest.mark.parametrize("capacity", [0, 100, 5000], ids=["at-once", "after-100-bytes", "after-5-kB"])
def test_torchs_runtime_error_on_a_failed_write_becomes_the_disk_error(monkeypatch, tmp_path, capacity):
    """torch's zip writer replaces the OSError of its file by 'RuntimeError: ... inline_container ... unexpected
    pos'; save_checkpoint gives back the OSError, which atomic_path words as the full disk."""
    monkeypatch.setattr(checkpoint, "open", lambda *_a, **_k: FullAfter(capacity), raising=False)
    with pytest.raises(WriteFailed) as info:
        save_checkpoint(tmp_path / "x.pth", {"weights": torch.zeros(1 << 16)})
    assert info.value.errno == errno.ENOSPC
    assert str(info.value).startswith(f"cannot write checkpoint {tmp_path / 'x.pth'} (the disk is full: ")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("code, words, fix", [
    (errno.ENOSPC, "the disk is full", "free some space or choose another --results_dir"),
    (errno.EROFS, "the file system is read-only", "choose another --results_dir"),
    (errno.EACCES, "permission denied", "choose another --results_dir"),
    (errno.EFBIG, "the file is larger than this file system allows", "free some space or choose another"),
])
def test_each_write_error_in_words_with_its_fix(monkeypatch, tmp_path, code, words, fix):
    def refuse(self, *_args, **_kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(Path, "write_text", refuse)
    with pytest.raises(WriteFailed) as info:
        ioutil.atomic_write_text(tmp_path / "metrics.json", "{}", fix="choose another --results_dir")
    assert f"cannot write {tmp_path / 'metrics.json'} ({words}" in str(info.value)
    assert str(info.value).endswith(fix if code != errno.EFBIG else "free some space or choose another "
                                                                     "--results_dir")
    assert isinstance(info.value, OSError) and isinstance(info.value, UserError) and info.value.errno == code
    assert leftovers(tmp_path) == []


def test_a_write_error_no_caller_worded_is_still_one_line_but_a_missing_file_is_a_bug(capsys):
    def full() -> int:
        raise OSError(errno.ENOSPC, "No space left on device", "/somewhere/out.mp4")

    with pytest.raises(SystemExit) as code:
        run_cli(full)
    assert code.value.code == 2
    assert capsys.readouterr().err == ("error: cannot write /somewhere/out.mp4 (the disk is full): free some space "
                                       "or choose another output folder\n")

    def missing() -> int:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/somewhere/in.npy")

    with pytest.raises(FileNotFoundError):  # reading a file that is not there is no write error: a traceback
        run_cli(missing)


# --- the logs: a full log disk costs the logs, never the run -----------------------------------------------------

def test_a_log_disk_that_fills_up_costs_the_curves_and_tensorboard_not_the_run(small_cfg, disk):
    """A real run whose --log_dir fills up part way: both kinds of log stop with one note each, the run finishes
    and saves, and nothing is printed as a traceback (tensorboardX's writer thread and exit hook included)."""
    disk.fill(leave=24 * 1024)
    cfg = small_cfg
    result = subprocess.run(
        [sys.executable, "train.py", f"--data_root={cfg.data_root}", f"--cache_dir={cfg.cache_dir}",
         f"--weights_dir={cfg.weights_dir}", f"--log_dir={disk.path / 'tb'}", "--dataset=toy", "--img_size=32",
         "--base_channels=8", "--iters=400", "--val_interval=0", "--save_interval=0", "--log_interval=1",
         "--batch_size=2", "--tensorboard=true", "--device=cpu", "--num_threads=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Traceback" not in output and "Exception in thread" not in output
    assert "note: the TensorBoard logs in " in output and "stop here (the disk is full" in output
    assert "note: the training curves stop at step " in output
    assert load_checkpoint(Path(cfg.weights_dir) / "latest_toy.pth")["step"] == 400


class BrokenWriter:
    """A SummaryWriter stand-in whose writes fail as on a full disk."""

    def __init__(self, _folder):
        self.calls = 0

    def add_scalar(self, *_args):
        self.calls += 1
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def close(self):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_tensorboard_write_that_fails_is_said_once_and_logging_stops(tmp_path):
    from ffpvad.training.tensorboard_log import TensorBoardLog

    said = []
    log = TensorBoardLog(tmp_path, BrokenWriter, said.append)
    writer = log.writer
    for step in range(5):
        log.add_scalar("loss", 1.0, step)
    log.close()
    assert writer.calls == 1 and len(said) == 1
    assert said[0].startswith(f"note: the TensorBoard logs in {tmp_path} stop here (the disk is full")
