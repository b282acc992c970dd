"""ioutil's atomic writes (issue #20): written files get the usual permissions (0666 minus the umask, not
mkstemp's 0600), a crashed writer's temporary file is removed at the next write of the same target, and a folder
that cannot be written is one UserError line."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT
from ffpvad.errors import UserError
from ffpvad.ioutil import atomic_path, atomic_write_text  # what existed before issue #20: the tests run against either

try:
    import fcntl
except ImportError:
    fcntl = None

# Written by a fresh interpreter whose umask is set before any project module is imported: a checkpoint, a text file
# and a keep_extension file (a video's path), each in a folder the write creates.
WRITE_EVERY_KIND = r"""
import json, os, sys
os.umask(int(sys.argv[1], 8))
from pathlib import Path
import torch
from ffpvad.checkpoint import save_checkpoint
from ffpvad.ioutil import atomic_path, atomic_write_text

out = Path(sys.argv[3])
save_checkpoint(out / "weights" / "latest_toy.pth", {"generator": {"w": torch.zeros(2)}})
atomic_write_text(out / "results" / "metrics.json", "{}\n")
with atomic_path(out / "videos" / "clip.mp4", keep_extension=True) as tmp:
    tmp.write_bytes(b"frames")
paths = ["weights/latest_toy.pth", "results/metrics.json", "videos/clip.mp4", "weights", "results"]
print(json.dumps({p: oct(os.stat(out / p).st_mode & 0o777) for p in paths}))
"""


def modes_written_under(umask: int, out) -> dict[str, str]:
    run = subprocess.run([sys.executable, "-c", WRITE_EVERY_KIND, f"{umask:o}", str(ROOT), str(out)],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("umask, file_mode, folder_mode", [(0o022, "0o644", "0o755"), (0o077, "0o600", "0o700")],
                         ids=["umask022", "umask077"])
def test_written_files_get_the_usual_permissions(tmp_path, umask, file_mode, folder_mode):
    modes = modes_written_under(umask, tmp_path)
    assert modes == {"weights/latest_toy.pth": file_mode, "results/metrics.json": file_mode,
                     "videos/clip.mp4": file_mode, "weights": folder_mode, "results": folder_mode}, modes


def test_a_umask_changed_after_import_is_followed(tmp_path):
    """The kernel applies the umask when the temporary file is created, as for open(): no stale copy of it."""
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode) == 0o640


def test_label_writers_get_the_usual_permissions_from_atomic_path_alone(tmp_path):
    from ffpvad.data import labels

    umask = os.umask(0o022)
    try:
        labels.write_frame_mask_folder(tmp_path, ["01"], [np.zeros(4, np.uint8)])
        labels.write_ano_pred_mat(tmp_path / "gt.mat", [np.zeros(4, np.uint8)])
    finally:
        os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "01.npy").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "gt.mat").st_mode) == 0o644


# --- stale temporary files ---------------------------------------------------------------------------------------

AN_HOUR = 3600.0  # a crashed writer's file: older than ioutil.STALE_AFTER_S
A_MOMENT = 1.0  # a live writer's file: younger


def test_the_age_of_a_stale_file_lies_between_a_live_and_a_crashed_writers():
    from ffpvad.ioutil import STALE_AFTER_S

    assert A_MOMENT < STALE_AFTER_S < AN_HOUR


def make_temporary(path, age_s: float = 0.0):
    path.write_bytes(b"half a checkpoint")
    if age_s:
        then = time.time() - age_s
        os.utime(path, (then, then))
    return path


def test_a_killed_writers_temporary_file_goes_at_the_next_write_of_that_target(tmp_path):
    from ffpvad.checkpoint import save_checkpoint

    old = AN_HOUR
    stale = [make_temporary(tmp_path / name, old) for name in (
        ".latest_toy.pth.k2j1x9_a.pth.tmp",  # what save_checkpoint's atomic_path(suffix=".pth") makes
        ".latest_toy.pth.q0w9e8r7.tmp",      # the plain form
        ".latest_toy.pth.zz00zz00.tmp.pth",  # the keep_extension form
    )]
    kept = [
        make_temporary(tmp_path / ".latest_toy.pth.abcdefgh.pth.tmp", A_MOMENT),  # recent: a writer may be at it now
        make_temporary(tmp_path / ".latest_toy2.pth.k2j1x9_a.pth.tmp", old),  # another target's
        make_temporary(tmp_path / ".g_best_auc_toy.pth.k2j1x9_a.pth.tmp", old),
        make_temporary(tmp_path / ".latest_toy.pth.bak.k2j1x9_a.pth.tmp", old),  # target latest_toy.pth.bak
        make_temporary(tmp_path / "latest_toy.pth.k2j1x9_a.pth.tmp", old),  # no leading dot: not one of ours
    ]
    save_checkpoint(tmp_path / "latest_toy.pth", {"step": 1})
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["latest_toy.pth", *(p.name for p in kept)])


def test_the_keep_extension_form_goes_too_and_a_text_files(tmp_path):
    video = make_temporary(tmp_path / ".clip.mp4.ab12cd34.tmp.mp4", AN_HOUR)
    text = make_temporary(tmp_path / ".metrics.json.ab12cd34.tmp", AN_HOUR)
    with atomic_path(tmp_path / "clip.mp4", keep_extension=True) as tmp:
        tmp.write_bytes(b"frames")
    assert not video.exists() and text.exists()  # only the target written
    atomic_write_text(tmp_path / "metrics.json", "{}")
    assert not text.exists()


@pytest.mark.skipif(fcntl is None, reason="no fcntl.flock on this platform: an open file cannot be removed there")
def test_a_temporary_file_its_writer_still_holds_is_left_alone(tmp_path):
    """A slow writer (a video written for an hour) keeps its lock: however old the file, no cleanup takes it."""
    busy = make_temporary(tmp_path / ".clip.mp4.ab12cd34.tmp.mp4", AN_HOUR)
    fd = os.open(busy, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with atomic_path(tmp_path / "clip.mp4", keep_extension=True) as tmp:
            tmp.write_bytes(b"frames")
        assert busy.exists()
    finally:
        os.close(fd)


def test_a_write_in_progress_survives_another_write_of_the_same_target(tmp_path):
    with atomic_path(tmp_path / "a.npy", suffix=".npy") as first:
        then = time.time() - AN_HOUR
        os.utime(first, (then, then))  # as if it had been written for ten minutes
        atomic_write_text(tmp_path / "a.npy", "second")
        assert first.exists() == (fcntl is not None)
        if fcntl is None:
            pytest.skip("without fcntl.flock only the age protects a writer")
        with open(first, "wb") as handle:  # a file object: np.save would append .npy to the name
            np.save(handle, np.zeros(3))
    assert np.load(tmp_path / "a.npy").shape == (3,)


# --- folders that cannot be written --------------------------------------------------------------------------------

def test_a_folder_that_is_a_file_is_one_line(tmp_path):
    from ffpvad.ioutil import ensure_writable_dir

    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    for folder, why in ((blocker, "it is a file, not a folder"),
                        (blocker / "run", f"{blocker} is a file, not a folder")):
        with pytest.raises(UserError) as info:
            ensure_writable_dir(folder, "results folder", "choose another with --results_dir")
        assert str(info.value) == f"cannot write results folder {folder} ({why}): choose another with --results_dir"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="running as root: permission bits do not stop root's writes, so no read-only folder exists")
def test_a_read_only_folder_is_one_line(tmp_path):
    from ffpvad.ioutil import ensure_writable_dir

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        for folder in (locked, locked / "run"):
            with pytest.raises(UserError, match=r"\(Permission denied\): choose another"):
                ensure_writable_dir(folder, "results folder", "choose another with --results_dir")
    finally:
        locked.chmod(0o755)


def test_a_writable_folder_is_created_and_left_clean(tmp_path):
    from ffpvad.ioutil import ensure_writable_dir

    folder = ensure_writable_dir(tmp_path / "a" / "b", "results folder", "choose another")
    assert folder.is_dir() and list(folder.iterdir()) == []
