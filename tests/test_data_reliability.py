"""Issue 28, the data part ("nothing lost, nothing silent"): gaps and duplicates in frame numbering, unsafe or
damaged archives, where the toy set is generated, an unwritable frame cache, full disks and read-only folders while
preparing, and an adversarial pass over loading and preparation.  Every input is generated here (numpy, OpenCV,
PyAV); the full-disk cases run on a real small tmpfs where one can be mounted, and by fault injection everywhere."""
from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from ffpvad.data import dataset
from ffpvad.data import toydata
from ffpvad.config import preset
from conftest import ROOT
from ffpvad.data.dataset import TestSet, TrainClips, VideoSet, list_videos
from ffpvad.errors import UserError, WriteFailed, run_cli
from ffpvad.data.labels import find_label_source, labels_from_concatenated_npy, labels_from_mask_folder, write_ano_pred_mat
from ffpvad.data.preparation import pipeline, prepare
from test_prepare import make_custom, make_ucsd, opts, write_avi

# --- helpers ------------------------------------------------------------------------------------------------------


def png(value: int = 0, shape: tuple = (8, 8, 3), dtype=np.uint8) -> bytes:
    return cv2.imencode(".png", np.full(shape, value, dtype))[1].tobytes()


def make_video(folder: Path, names, shape: tuple = (8, 8, 3)) -> None:
    """One small PNG per name; the pixel value encodes the position, so an order mistake shows."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        (folder / name).write_bytes(png(10 * k % 250, shape))


def numbered(n: int, ext: str = "png", digits: int = 3, start: int = 0) -> list[str]:
    return [f"{t:0{digits}d}.{ext}" for t in range(start, start + n)]


def mini_root(tmp_path: Path, split: str = "training", videos: dict | None = None) -> Path:
    """<tmp>/data/mini/<split>/frames/<video>/ with the given names (default: two 0-based videos of 6 frames)."""
    root = tmp_path / "data"
    for name, names in (videos or {"01": numbered(6), "02": numbered(6)}).items():
        make_video(root / "mini" / split / "frames" / name, names)
    return root


def mini_cfg(root: Path, tmp_path: Path, **changes):
    return preset("ped2").replace(dataset="mini", data_root=str(root), cache_dir=str(tmp_path / "cache"),
                                  img_size=8, **changes)


def one_line(info) -> str:
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message, message
    return message


def cli(capsys, argv: list[str]) -> str:
    """The one error line tools/prepare_data.py prints for ``argv`` (exit 2, no traceback)."""
    from ffpvad.commands.prepare_data import main
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: main(argv + ["--no_progress"]))
    err = capsys.readouterr().err
    lines = err.splitlines()  # progress lines ("extracting ...") may come first: the error is the one last line
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    assert lines[-1].startswith("error: ") and sum(line.startswith("error: ") for line in lines) == 1, err
    return lines[-1]


def leftovers(folder: Path) -> list[str]:
    """Temporary or partial things a failed write might leave (hidden .partial-*, .tmp files, .toy-* folders)."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if ".partial" in p.name or p.name.endswith(".tmp") or ".tmp." in p.name
                  or p.name.startswith(".toy-"))


# --- a real small disk (tmpfs), unmounted whatever happens ----------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB tmpfs mounted at <tmp>/disk: (its path, remount(options)).  Skipped, with the reason, where
    mounting is not allowed (not root, no mount(8), a container without the capability)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("not root: cannot mount a tmpfs for the real full-disk case (the fault-injection variant ran)")
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot run mount ({exc}): the real full-disk case did not run (the fault-injection one did)")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({done.stderr.strip()}): the real full-disk case did not run (the "
                    f"fault-injection one did)")

    def remount(options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(mount)], check=True, capture_output=True)

    try:
        yield mount, remount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# === 1. gaps and duplicates in frame numbering ======================================================================

@pytest.mark.parametrize("names, pattern", [
    (numbered(10) + numbered(10, start=11), r"is missing frame 010\.png of 000\.png\.\.020\.png"),
    (numbered(3) + numbered(3, start=6), r"is missing 3 frames \(003\.png, 004\.png, 005\.png\) of 000\.png\.\.008"),
    (numbered(20) + ["0010.png"], r"has frame 10 twice \((0010|010)\.png and (010|0010)\.png\)"),
    ([f"{t}.png" for t in range(12)] + ["10.jpg"], r"has frame 10 twice \(10\.(png|jpg) and 10\.(jpg|png)\)"),
    (numbered(6) + ["cover.png"], r"cover\.png is not a numbered frame"),
    (numbered(6) + ["img_006.png"], r"mixes frame names 000\.png and img_006\.png"),
])
def test_a_gap_or_duplicate_in_the_frame_numbers_is_refused_naming_the_video(tmp_path, names, pattern):
    root = mini_root(tmp_path, videos={"01": numbered(6), "02": names})
    with pytest.raises(UserError, match=pattern) as info:
        VideoSet.load(mini_cfg(root, tmp_path), "training")
    message = one_line(info)
    assert f"video {root / 'mini' / 'training' / 'frames' / '02'}" in message
    assert "tools/prepare_data.py" in message and ("remove" in message)


def test_the_check_runs_for_eval_too_and_reads_names_only(tmp_path):
    root = mini_root(tmp_path, "testing", {"01": numbered(5), "02": numbered(2) + numbered(2, start=3)})
    write_ano_pred_mat(root / "mini" / "mini.mat", [np.array([0, 1, 1, 0, 0]), np.array([0, 0, 1, 1])])
    with pytest.raises(UserError, match=r"frames/02 is missing frame 002\.png"):
        TestSet.load(mini_cfg(root, tmp_path))
    assert not (tmp_path / "cache").exists()  # refused before anything was decoded or cached
    for frame in (root / "mini" / "testing" / "frames" / "01").iterdir():
        frame.write_bytes(b"not an image")  # names only: the check never opens a frame
    (root / "mini" / "testing" / "frames" / "02" / "002.png").write_bytes(b"")
    assert [len(v.frames) for v in list_videos(root / "mini" / "testing" / "frames")] == [5, 5]


def test_a_split_that_starts_at_1_is_accepted_but_one_video_of_a_0_based_split_is_missing_its_first(tmp_path):
    one_based = mini_root(tmp_path / "a", videos={"01": numbered(4, start=1), "02": numbered(5, start=1)})
    assert VideoSet.load(mini_cfg(one_based, tmp_path / "a"), "training").counts == [4, 5]  # e.g. ffmpeg %03d
    mixed = mini_root(tmp_path / "b", videos={"01": numbered(4), "02": numbered(5, start=1)})
    with pytest.raises(UserError, match=r"frames/02 is missing frame 000\.png of 000\.png\.\.005\.png"):
        VideoSet.load(mini_cfg(mixed, tmp_path / "b"), "training")
    late = mini_root(tmp_path / "c", videos={"01": numbered(4, start=3)})
    with pytest.raises(UserError, match=r"frames/01 is missing 2 frames \(001\.png, 002\.png\)"):
        VideoSet.load(mini_cfg(late, tmp_path / "c"), "training")


def test_a_prepared_video_that_lost_a_frame_is_refused_and_a_rerun_of_prepare_data_repairs_it(tmp_path):
    make_custom(tmp_path / "src")
    root = tmp_path / "data"
    prepare("custom", [tmp_path / "src"], opts(root))
    cfg = preset("custom").replace(data_root=str(root), cache_dir=str(tmp_path / "c"), img_size=8)
    video = root / "custom" / "testing" / "frames" / "cam1_tuesday"
    (video / "003.png").unlink()  # from the middle
    with pytest.raises(UserError, match=r"cam1_tuesday is missing frame 003\.png of 000\.png\.\.006\.png") as info:
        TestSet.load(cfg)
    assert "re-run tools/prepare_data.py for this dataset (it redoes the video)" in one_line(info)
    (video / "006.png").unlink()  # the last one too: only the manifest can tell
    shutil.copy(video / "002.png", video / "003.png")
    with pytest.raises(UserError, match=r"cam1_tuesday has 6 frames but tools/prepare_data\.py wrote 7 \(its "
                                        r"\.prepared\.json\): it lost frames at its end since"):
        TestSet.load(cfg)
    summary = prepare("custom", [tmp_path / "src"], opts(root))  # what the message says to do
    assert summary.written == 1
    assert TestSet.load(cfg).videos.counts == [7, 5]


# === 2. archives: members escaping the target, damaged archives ====================================================

def tar_with(path: Path, *members: tuple[str, str, str]) -> Path:
    """A .tar.gz of (kind, name, link target or content): kinds file, symlink, hardlink, fifo."""
    with tarfile.open(path, "w:gz") as tar:
        readme = b"UCSD readme"
        info = tarfile.TarInfo("UCSD_Anomaly_Dataset.v1p2/UCSDped2/README.txt")
        info.size = len(readme)
        tar.addfile(info, io.BytesIO(readme))
        for kind, name, extra in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(extra)
                tar.addfile(info, io.BytesIO(extra.encode()))
                continue
            info.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE}[kind]
            info.linkname = extra
            tar.addfile(info)
    return path


@pytest.mark.parametrize("member, why", [
    (("file", "../escaped.txt", "x"), "climbs out of the extraction folder"),
    (("file", "UCSD_Anomaly_Dataset.v1p2/../../escaped.txt", "x"), "climbs out of the extraction folder"),
    (("file", "/tmp/absolute_escape.txt", "x"), "has an absolute path"),
    (("symlink", "UCSD_Anomaly_Dataset.v1p2/passwd", "/etc/passwd"), "is a link with an absolute target"),
    (("symlink", "UCSD_Anomaly_Dataset.v1p2/up", "../../../escaped"), "is a link pointing out of the extraction"),
    (("hardlink", "UCSD_Anomaly_Dataset.v1p2/hard", "../escaped.txt"), "is a link pointing out of the extraction"),
    (("fifo", "UCSD_Anomaly_Dataset.v1p2/pipe", ""), "is a device or pipe"),
])
def test_a_tar_with_a_member_escaping_the_target_is_one_line_and_leaves_nothing(tmp_path, capsys, member, why):
    archive = tar_with(tmp_path / "UCSD_Anomaly_Dataset.tar.gz", member)
    root = tmp_path / "data"
    err = cli(capsys, ["ped2", "--src", str(archive), "--data_root", str(root)])
    assert f"archive {archive} has a member {member[1]!r} that {why}" in err and "nothing was extracted" in err
    assert not root.exists()  # no .prepare/, no .partial, not even the data root it would have created
    assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/absolute_escape.txt").exists()


@pytest.mark.parametrize("member, why", [
    ("../escaped.txt", "climbs out of the extraction folder"),
    ("/abs/escaped.txt", "has an absolute path"),
    ("link", "is a symbolic link, which zip extraction cannot recreate"),
])
def test_a_zip_with_an_escaping_member_or_a_link_is_refused(tmp_path, capsys, member, why):
    archive = tmp_path / "Avenue_Dataset.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("Avenue Dataset/readme.txt", "Avenue")
        info = zipfile.ZipInfo(member if member != "link" else "Avenue Dataset/link")
        if member == "link":
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd" if member == "link" else "x")
    (tmp_path / "data").mkdir()
    err = cli(capsys, ["avenue", "--src", str(archive), "--data_root", str(tmp_path / "data")])
    assert f"has a member {info.filename!r} that {why}" in err
    assert list((tmp_path / "data").iterdir()) == []  # the data root was there before: kept, and empty
    assert not (tmp_path / "escaped.txt").exists()


def _zip_of_ucsd(tmp_path: Path) -> Path:
    make_ucsd(tmp_path / "src")
    return Path(shutil.make_archive(str(tmp_path / "UCSD"), "zip", tmp_path / "src", "UCSD_Anomaly_Dataset.v1p2"))


@pytest.mark.parametrize("damage", ["truncated tar.gz", "garbage tar.gz", "truncated tar", "truncated zip",
                                    "bad crc zip"])
def test_a_damaged_archive_is_one_line_and_leaves_nothing(tmp_path, capsys, damage):
    if "zip" in damage:
        archive = _zip_of_ucsd(tmp_path)
        data = bytearray(archive.read_bytes())
        if damage == "truncated zip":
            del data[len(data) // 2:]
        else:  # flip bytes inside a member's data: the directory is fine, the CRC check fails while extracting
            with zipfile.ZipFile(archive) as zf:
                info = max(zf.infolist(), key=lambda i: i.compress_size)
            start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
            data[start + 10:start + 20] = bytes(b ^ 0xFF for b in data[start + 10:start + 20])
        archive.write_bytes(bytes(data))
    else:
        make_ucsd(tmp_path / "src")
        archive = tmp_path / ("UCSD.tar.gz" if "gz" in damage else "UCSD.tar")
        with tarfile.open(archive, "w:gz" if "gz" in damage else "w") as tar:
            tar.add(tmp_path / "src" / "UCSD_Anomaly_Dataset.v1p2", arcname="UCSD_Anomaly_Dataset.v1p2")
        data = archive.read_bytes()
        archive.write_bytes(b"\x1f\x8b garbage, not a download" * 40 if damage == "garbage tar.gz"
                            else data[:len(data) // 2])
    root = tmp_path / "data"
    err = cli(capsys, ["ped2", "--src", str(archive), "--data_root", str(root)])
    assert f"archive {archive} (" in err and "incomplete or damaged: download it again" in err
    assert not root.exists()


def test_an_archive_with_no_videos_is_one_line_and_its_extracted_copy_is_removed(tmp_path, capsys):
    archive = tar_with(tmp_path / "UCSD_Anomaly_Dataset.tar.gz")  # a README only
    err = cli(capsys, ["ped2", "--src", str(archive), "--data_root", str(tmp_path / "data")])
    assert "no UCSDped2 folder with Train/ and Test/" in err
    assert not (tmp_path / "data").exists()  # the extraction of a wrong archive is not kept, hidden, on the disk


# === 3. the toy set: where it is generated, and where not ==========================================================

@pytest.fixture
def fast_toy(toy_root, monkeypatch):
    """toydata.generate replaced by hard links to the session's toy set (the same files, in milliseconds)."""
    def link_copy(into: Path, seed: int = toydata.TOY_SEED) -> None:
        shutil.copytree(toy_root / "toy", into, copy_function=os.link, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("generated.json"))
    monkeypatch.setattr(toydata, "generate", link_copy)
    return toy_root


def toy_cfg(root: Path, tmp_path: Path):
    return preset("toy").replace(data_root=str(root), cache_dir=str(tmp_path / "cache"), img_size=8)


@pytest.mark.parametrize("where, reason", [
    ("missing", "--data_root {root} did not exist"),
    ("empty", "--data_root {root} was empty"),
    ("with ped2", "--data_root {root} had no toy/ yet"),
    ("empty toy", "{root}/toy was empty"),
])
def test_the_toy_set_is_generated_where_nothing_is_lost_and_it_says_so(tmp_path, fast_toy, capsys, where, reason):
    root = tmp_path / "data"
    if where != "missing":
        root.mkdir()
    if where == "with ped2":
        (root / "ped2" / "training" / "frames").mkdir(parents=True)
    if where == "empty toy":
        (root / "toy").mkdir()
    assert len(VideoSet.load(toy_cfg(root, tmp_path), "training").counts) == toydata.N_TRAIN
    err = capsys.readouterr().err
    assert f"generating the synthetic 'toy' dataset (8 training / 10 test videos) in {root / 'toy'}: " \
           f"{reason.format(root=root)}" in err
    VideoSet.load(toy_cfg(root, tmp_path), "testing")
    assert "generating" not in capsys.readouterr().err  # a complete set is used without a word
    assert leftovers(root) == []


@pytest.mark.parametrize("where, pattern", [
    ("a file", r"--data_root .*data is a file, not a folder"),
    ("other things", r"--data_root .*data exists but holds no datasets \(it has notes\.txt, photos/\), so the toy "
                     r"set is not generated there"),
    ("foreign toy", r"toy exists but was not generated by this project \(no generated\.json\)"),
    ("corrupt marker", r"toy/generated\.json is unreadable .*: remove .*toy and run again to regenerate"),
    ("frame lost", r"the toy set in .*toy is incomplete or damaged \(testing video 03 lacks 1 of its 160 frames "
                   r"\(017\.jpg, \.\.\.\)\): remove .*toy and run again to regenerate it"),
    ("video lost", r"incomplete or damaged \(training video 08 is missing\)"),
    ("labels lost", r"incomplete or damaged \(toy\.mat is missing\)"),
])
def test_a_toy_root_that_is_not_a_place_for_it_or_a_damaged_toy_set_is_one_line(tmp_path, fast_toy, where,
                                                                                  pattern):
    root = tmp_path / "data"
    if where == "a file":
        root.write_text("x")
    elif where == "other things":
        (root / "photos").mkdir(parents=True)
        (root / "notes.txt").write_text("x")
    elif where == "foreign toy":
        (root / "toy" / "mine").mkdir(parents=True)
    else:
        toydata.ensure_toy_dataset(root)
        toy = root / "toy"
        {"corrupt marker": lambda: (toy / "generated.json").write_text("{not json"),
         "frame lost": lambda: (toy / "testing" / "frames" / "03" / "017.jpg").unlink(),
         "video lost": lambda: shutil.rmtree(toy / "training" / "frames" / "08"),
         "labels lost": lambda: (toy / "toy.mat").unlink()}[where]()
    before = sorted(p.name for p in root.iterdir()) if root.is_dir() else None
    with pytest.raises(UserError, match=pattern) as info:
        VideoSet.load(toy_cfg(root, tmp_path), "training")
    one_line(info)
    assert (sorted(p.name for p in root.iterdir()) if root.is_dir() else None) == before  # nothing generated


def test_a_toy_set_of_an_older_generator_is_regenerated_saying_so(tmp_path, fast_toy, capsys):
    root = tmp_path / "data"
    toydata.ensure_toy_dataset(root)
    (root / "toy" / "generated.json").write_text(json.dumps({"version": 1}))
    (root / "toy" / "old_only.txt").write_text("from the old generator")
    capsys.readouterr()
    toydata.ensure_toy_dataset(root)
    assert "the one there was made by generator version 1, this is version 2" in capsys.readouterr().err
    assert not (root / "toy" / "old_only.txt").exists() and leftovers(root) == []


def test_the_toy_set_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def fail_after_50(path, frame, *_):
        calls.append(path)
        if len(calls) > 50:
            enospc()
        path.write_bytes(b"frame")

    monkeypatch.setattr(toydata, "write_image", fail_after_50)
    root = tmp_path / "data"
    with pytest.raises(WriteFailed, match=r"^cannot write toy dataset .*data/toy \(the disk is full: .* free "
                                          r"there\): free some space or choose another --data_root$"):
        toydata.ensure_toy_dataset(root)
    assert list(root.iterdir()) == []  # the temporary folder is gone, no toy/ that looks finished


def test_the_toy_set_on_a_real_full_or_read_only_disk(small_disk):
    disk, remount = small_disk
    with pytest.raises(WriteFailed, match=r"cannot write toy dataset .*disk/toy \(the disk is full: .*\): free some "
                                          r"space or choose another --data_root"):
        toydata.ensure_toy_dataset(disk)  # 12 MB of frames on a 1 MiB disk
    assert list(disk.iterdir()) == []
    remount("ro")
    with pytest.raises(WriteFailed, match=r"cannot write toy dataset .*disk/toy \(the file system is read-only\): "
                                          r"choose another --data_root$"):
        toydata.ensure_toy_dataset(disk)


# === 4. an unwritable --cache_dir ===================================================================================

def count_decodes(monkeypatch) -> list:
    decoded = []
    real = dataset.read_image
    monkeypatch.setattr(dataset, "read_image", lambda path: (decoded.append(path), real(path))[1])
    return decoded


@pytest.mark.parametrize("cache", ["a file", "below a file"])
def test_a_cache_dir_that_cannot_be_a_folder_is_one_line_before_decoding(tmp_path, monkeypatch, cache):
    root = mini_root(tmp_path)
    (tmp_path / "file").write_text("x")
    cache_dir = tmp_path / "file" if cache == "a file" else tmp_path / "file" / "cache"
    decoded = count_decodes(monkeypatch)
    with pytest.raises(WriteFailed, match=r"^cannot write frame cache --cache_dir .*file.*mini/training \(.*file is a "
                                          r"file, not a folder\): choose a writable --cache_dir") as info:
        VideoSet.load(mini_cfg(root, tmp_path).replace(cache_dir=str(cache_dir)), "training")
    one_line(info)
    assert decoded == []


def test_a_read_only_cache_dir_is_refused_up_front_but_a_complete_one_is_used(tmp_path, small_disk, monkeypatch):
    disk, remount = small_disk
    root = mini_root(tmp_path)
    cfg = mini_cfg(root, tmp_path).replace(cache_dir=str(disk / "cache"))
    VideoSet.load(cfg, "training")  # a complete cache, then the mount made read-only (a shared, prebuilt cache)
    remount("ro")
    decoded = count_decodes(monkeypatch)
    assert VideoSet.load(cfg, "training").counts == [6, 6] and decoded == []
    make_video(root / "mini" / "testing" / "frames" / "01", numbered(4))  # not cached yet: needs writing
    with pytest.raises(WriteFailed, match=r"^cannot write frame cache --cache_dir .*disk/cache/mini/testing \(the "
                                          r"file system is read-only\): choose a writable --cache_dir"):
        VideoSet.load(cfg, "testing")
    assert decoded == []  # refused before the first frame was decoded


def test_a_full_disk_while_caching_is_one_line_and_keeps_the_finished_videos(tmp_path, small_disk):
    disk, _ = small_disk
    root = mini_root(tmp_path, videos={f"{v:02d}": numbered(40) for v in range(1, 4)})
    cfg = mini_cfg(root, tmp_path).replace(cache_dir=str(disk / "cache"), img_size=64)  # 480 KiB per video
    with pytest.raises(WriteFailed, match=r"^cannot write frame cache .*disk/cache/mini/training/03_64px_\w+\.npy "
                                          r"\(the disk is full: .* free there\): free some space or choose a "
                                          r"writable --cache_dir"):
        VideoSet.load(cfg, "training")
    kept = sorted(p.name[:2] for p in (disk / "cache" / "mini" / "training").iterdir())
    assert kept == ["01", "02"]  # no half file, no temporary one


def test_a_full_disk_while_caching_by_fault_injection(tmp_path, monkeypatch):
    root = mini_root(tmp_path)
    monkeypatch.setattr(dataset, "save_npy", lambda handle, array: (handle.write(b"half"), enospc()))
    with pytest.raises(WriteFailed, match=r"cannot write frame cache .*01_8px_\w+\.npy \(the disk is full"):
        VideoSet.load(mini_cfg(root, tmp_path), "training")
    assert list((tmp_path / "cache" / "mini" / "training").iterdir()) == []


# === 5. preparing on a full disk or into a read-only folder ========================================================

def failing_frame_writes(monkeypatch, after: int) -> list:
    """Path.write_bytes (what the preparation writes each frame with) fails with ENOSPC after ``after`` frames."""
    calls = []
    real = Path.write_bytes

    def write_bytes(self, data):
        if ".partial-" in str(self.parent):
            calls.append(self)
            if len(calls) > after:
                enospc()
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    return calls


def test_a_full_disk_while_preparing_is_one_line_keeps_finished_videos_and_resumes(tmp_path, monkeypatch, capsys):
    make_ucsd(tmp_path / "src")
    root = tmp_path / "data"
    failing_frame_writes(monkeypatch, after=9)  # inside the first test video (4 + 3 training frames before it)
    err = cli(capsys, ["ped2", "--src", str(tmp_path / "src"), "--data_root", str(root), "--workers=1",
                       "--image_format=png"])
    assert f"cannot write testing video {root / 'ped2' / 'testing' / 'frames' / '01'} (the disk is full: " in err
    assert "free some space or choose another --data_root (finished videos are kept: run the same command again" in err
    assert sorted(p.name for p in (root / "ped2" / "training" / "frames").iterdir()) == ["01", "02"]
    assert not (root / "ped2" / "testing" / "frames").exists() or \
        list((root / "ped2" / "testing" / "frames").iterdir()) == []
    assert leftovers(root) == [] and not (root / "ped2" / "ped2.mat").exists()
    monkeypatch.undo()
    summary = prepare("ped2", [tmp_path / "src"], opts(root))
    assert summary.written == 3 and summary.splits == {"training": (2, 7), "testing": (3, 15)}


def test_a_full_disk_while_writing_labels_or_masks_is_one_line(tmp_path, monkeypatch):
    make_ucsd(tmp_path / "src")
    root = tmp_path / "data"
    real_open = open

    def no_space_for(suffix):
        def fake_open(file, mode="r", *args, **kwargs):
            if "w" in mode and str(file).endswith(suffix):
                handle = real_open(file, mode, *args, **kwargs)
                handle.write(b"half")  # a part written, then the disk fills
                handle.close()
                enospc()
            return real_open(file, mode, *args, **kwargs)
        return fake_open

    import builtins
    monkeypatch.setattr(builtins, "open", no_space_for(".npy.tmp"))
    with pytest.raises(WriteFailed, match=r"cannot write pixel mask .*pixel_masks/0\d\.npy \(the disk is full"):
        prepare("ped2", [tmp_path / "src"], opts(root, labels_only=True, workers=1))
    monkeypatch.setattr(builtins, "open", no_space_for(".mat.tmp"))
    with pytest.raises(WriteFailed, match=r"cannot write label file .*ped2/ped2\.mat \(the disk is full: .*\): free "
                                          r"some space or choose another --data_root$"):
        prepare("ped2", [tmp_path / "src"], opts(root, labels_only=True, workers=1))
    assert not (root / "ped2" / "ped2.mat").exists() and leftovers(root) == []
    monkeypatch.undo()
    assert prepare("ped2", [tmp_path / "src"], opts(root, labels_only=True)).anomalous == 11


def test_preparing_on_a_real_full_disk_then_resuming_once_there_is_room(tmp_path, small_disk, monkeypatch):
    disk, remount = small_disk
    src = tmp_path / "src"
    for v in range(1, 4):  # 3 x 30 noisy 64x64 PNGs, about 0.45 MiB a video: the 1 MiB disk fills in the second
        folder = src / "training" / f"cam{v}"
        folder.mkdir(parents=True)
        for t, frame in enumerate(np.random.default_rng(v).integers(0, 256, (30, 64, 64, 3), dtype=np.uint8)):
            cv2.imwrite(str(folder / f"{t:03d}.png"), frame)
    # The up-front estimate would refuse (it keeps a 64 MB margin): a disk that fills during the run, e.g. by
    # another process, is the case here.
    monkeypatch.setattr(pipeline, "check_space", lambda *args: 0)
    with pytest.raises(WriteFailed, match=r"cannot write training video .*frames/cam(2|3) \(the disk is full: .* "
                                          r"free there\): free some space or choose another --data_root \(finished "
                                          r"videos are kept") as info:
        prepare("custom", [src], opts(disk, workers=1))
    one_line(info)
    kept = sorted(p.name for p in (disk / "custom" / "training" / "frames").iterdir())
    failed = "cam2" if kept == ["cam1"] else "cam3"
    assert kept in (["cam1"], ["cam1", "cam2"]) and f"frames/{failed} (" in str(info.value)
    assert leftovers(disk) == []
    remount("size=8m")
    summary = prepare("custom", [src], opts(disk, workers=1))
    assert summary.written == 3 - len(kept) and summary.splits == {"training": (3, 90)}


def test_preparing_into_a_read_only_data_root_is_one_line_up_front(tmp_path, small_disk, capsys):
    disk, remount = small_disk
    make_custom(tmp_path / "src")
    remount("ro")
    archive = Path(shutil.make_archive(str(tmp_path / "cams"), "zip", tmp_path / "src"))
    for src in (tmp_path / "src", archive):  # a folder, and an archive (checked before its size or its members)
        err = cli(capsys, ["custom", "--src", str(src), "--data_root", str(disk)])
        assert err == f"error: cannot write --data_root {disk} (the file system is read-only): choose another " \
                      f"--data_root"


def test_extracting_an_archive_on_a_full_disk_leaves_no_partial_folder(tmp_path, monkeypatch, capsys):
    make_ucsd(tmp_path / "src")
    archive = tmp_path / "UCSD.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "UCSD_Anomaly_Dataset.v1p2", arcname="UCSD_Anomaly_Dataset.v1p2")
    real = tarfile.TarFile.extractall

    def half_then_full(self, path, *args, **kwargs):
        (Path(path) / "half.tif").write_bytes(b"half")
        enospc()

    monkeypatch.setattr(tarfile.TarFile, "extractall", half_then_full)
    err = cli(capsys, ["ped2", "--src", str(archive), "--data_root", str(tmp_path / "data")])
    assert "cannot write extracted archive " in err and "(the disk is full: " in err
    assert not (tmp_path / "data").exists()
    monkeypatch.setattr(tarfile.TarFile, "extractall", real)
    assert prepare("ped2", [archive], opts(tmp_path / "data")).splits["testing"] == (3, 15)


# === adversarial pass over loading and preparation =================================================================

def test_a_frame_that_is_a_folder_or_a_pipe_is_named(tmp_path):
    root = mini_root(tmp_path)
    frames = root / "mini" / "training" / "frames"
    (frames / "02" / "003.png").unlink()
    (frames / "02" / "003.png").mkdir()
    with pytest.raises(UserError, match=r"^frame .*02/003\.png is a folder, not an image file"):
        VideoSet.load(mini_cfg(root, tmp_path), "training")
    (frames / "02" / "003.png").rmdir()
    os.mkfifo(frames / "02" / "003.png")  # reading it would block forever
    with pytest.raises(UserError, match=r"^frame .*02/003\.png is not a regular file \(a pipe, device or socket\)"):
        VideoSet.load(mini_cfg(root, tmp_path), "training")


def test_loose_files_and_broken_links_in_the_frames_folder_are_not_silently_left_out(tmp_path):
    root = mini_root(tmp_path)
    frames = root / "mini" / "training" / "frames"
    cfg = mini_cfg(root, tmp_path)
    (frames / "README.txt").write_text("notes")  # not a video: ignored, as before
    (frames / ".partial-03").mkdir()  # a crashed preparation's folder: hidden, never a video
    assert VideoSet.load(cfg, "training").counts == [6, 6]
    (frames / "cam3.mp4").write_bytes(b"\x00")
    with pytest.raises(UserError, match=r"cam3\.mp4 is a video file, but the frames folder holds one folder of "
                                        r"frames per video: prepare it with tools/prepare_data\.py"):
        VideoSet.load(cfg, "training")
    (frames / "cam3.mp4").unlink()
    (frames / "000.png").write_bytes(png())
    with pytest.raises(UserError, match=r"000\.png is an image directly in the frames folder"):
        VideoSet.load(cfg, "training")
    (frames / "000.png").unlink()
    (frames / "03").symlink_to(tmp_path / "gone")
    with pytest.raises(UserError, match=r"video folder .*frames/03 is a broken symbolic link"):
        VideoSet.load(cfg, "training")


@pytest.mark.parametrize("kind", ["grey", "rgba", "16-bit", "uppercase .JPG", "mixed jpg and png"])
def test_grey_rgba_16_bit_and_mixed_format_frames_load_as_rgb(tmp_path, kind):
    root = mini_root(tmp_path, videos={"01": numbered(3)})
    video = root / "mini" / "training" / "frames" / "01"
    (video / "001.png").unlink()
    if kind == "grey":
        (video / "001.png").write_bytes(png(90, (8, 8)))
    elif kind == "rgba":
        (video / "001.png").write_bytes(cv2.imencode(".png", np.dstack([np.full((8, 8, 3), 90, np.uint8),
                                                                         np.zeros((8, 8), np.uint8)]))[1])
    elif kind == "16-bit":
        (video / "001.png").write_bytes(png(90 * 256, (8, 8, 3), np.uint16))
    else:
        name = "001.JPG" if kind.startswith("uppercase") else "001.jpg"
        (video / name).write_bytes(cv2.imencode(".jpg", np.full((8, 8, 3), 90, np.uint8))[1])
    (frames,) = VideoSet.load(mini_cfg(root, tmp_path), "training").frames
    assert frames.shape == (3, 8, 8, 3)
    assert np.abs(frames[1].astype(int) - 90).max() <= 2  # three equal channels, 8-bit, alpha dropped


def test_a_video_shorter_than_a_clip(tmp_path):
    root = mini_root(tmp_path, videos={"01": numbered(1), "02": numbered(6)})
    clips = TrainClips(VideoSet.load(mini_cfg(root, tmp_path), "training"), clip_len=5)
    assert len(clips) == 2  # the one-frame video has no clip; the other's two are all
    with pytest.raises(UserError, match="no training video has 7 frames: lower --clip_len"):
        TrainClips(VideoSet.load(mini_cfg(root, tmp_path), "training"), clip_len=7)


def test_non_ascii_names_load_and_prepare(tmp_path):
    src = tmp_path / "données sources"
    for split, name in (("training", "café_ü"), ("testing", "夜間カメラ")):
        folder = src / split / name
        folder.mkdir(parents=True)
        for t in range(4):
            (folder / f"{t}.png").write_bytes(png(20 * t))
    (src / "labels.csv").write_text("夜間カメラ,1,2\n", encoding="utf-8")
    root = tmp_path / "jeu de données"
    prepare("custom", [src], opts(root))
    test_set = TestSet.load(preset("custom").replace(data_root=str(root), cache_dir=str(tmp_path / "ç"),
                                                   img_size=8))
    assert test_set.videos.names == ["夜間カメラ"] and test_set.labels[0].tolist() == [0, 1, 1, 0]
    assert VideoSet.load(preset("custom").replace(data_root=str(root), cache_dir=str(tmp_path / "ç"), img_size=8),
                         "training").names == ["café_ü"]


@pytest.mark.parametrize("damage", ["zero bytes", "truncated jpeg", "not an image", "another size"])
def test_a_bad_frame_in_a_custom_frame_folder_is_named_and_the_video_not_written(tmp_path, damage):
    make_custom(tmp_path / "src")
    folder = tmp_path / "src" / "testing" / "cam2 night"
    bad = folder / "img_3.png"
    if damage == "another size":
        cv2.imwrite(str(bad), np.zeros((20, 30, 3), np.uint8))
    else:
        bad.unlink()
        bad = folder / "img_3.jpg"
        noise = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
        data = cv2.imencode(".jpg", noise)[1].tobytes()
        bad.write_bytes({"zero bytes": b"", "truncated jpeg": data[:len(data) * 2 // 3],
                         "not an image": b"plain text"}[damage])
    pattern = {"zero bytes": r"img_3\.jpg.*empty", "truncated jpeg": r"img_3\.jpg is truncated",
               "not an image": r"img_3\.jpg.* not an image", "another size": r"frame 2 is 30x20 but the first"}[damage]
    with pytest.raises(UserError, match=pattern) as info:
        prepare("custom", [tmp_path / "src"], opts(tmp_path / "data"))
    one_line(info)
    frames = tmp_path / "data" / "custom" / "testing" / "frames"
    assert not (frames / "cam2 night").exists() and leftovers(tmp_path / "data") == []


@pytest.mark.parametrize("video", ["no frames", "truncated"])
def test_a_custom_video_with_no_frames_or_a_cut_container_is_named(tmp_path, video):
    import av
    src = tmp_path / "src"
    (src / "training").mkdir(parents=True)
    path = src / "training" / "cam.mkv"
    if video == "no frames":
        with av.open(str(path), "w") as container:  # a header, no frame
            stream = container.add_stream("ffv1", rate=25)
            stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
            container.start_encoding()
    else:
        write_avi(path.with_suffix(".avi"), np.random.default_rng(0).integers(0, 256, (30, 16, 24, 3), np.uint8))
        path = path.with_suffix(".avi")
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    with pytest.raises(UserError, match=rf"cannot read video .*{path.name} with OpenCV|{path.name} ends after \d+ "
                                        rf"of the 30 frames its header announces") as info:
        prepare("custom", [src], opts(tmp_path / "data"))
    one_line(info)
    assert leftovers(tmp_path / "data") == []


@pytest.mark.parametrize("values", [[0, 255, 255, 0], [0, 0.5, 1, 0], [0, np.nan, 1, 0], [0, -1, 1, 0]])
def test_frame_labels_other_than_0_and_1_are_refused(tmp_path, values):
    np.save(tmp_path / "frame_labels_mini.npy", np.array(values, dtype=np.float64))
    with pytest.raises(UserError, match=r"frame_labels_mini\.npy holds the value .* at position 1 .*neither 0 nor 1"):
        labels_from_concatenated_npy(tmp_path / "frame_labels_mini.npy", [4])
    (tmp_path / "masks").mkdir()
    np.save(tmp_path / "masks" / "01.npy", np.array(values))
    with pytest.raises(UserError, match=r"01\.npy holds the value"):
        labels_from_mask_folder(tmp_path / "masks", ["01"], [4])


def test_a_label_file_that_is_a_symlink_loop_is_named_not_skipped(tmp_path):
    root = tmp_path / "data"
    (root / "mini").mkdir(parents=True)
    np.save(root / "frame_labels_mini.npy", np.zeros(4))  # a later candidate the search would fall through to
    (root / "mini" / "mini.mat").symlink_to(root / "mini" / "mini.mat")
    cfg = mini_cfg(root, tmp_path)
    with pytest.raises(UserError, match=r"label file .*mini/mini\.mat is a broken symbolic link"):
        find_label_source(cfg)
    with pytest.raises(UserError, match=r"label file .*mini/mini\.mat is a broken symbolic link"):
        find_label_source(cfg.replace(labels=str(root / "mini" / "mini.mat")))
    (root / "mini" / "mini.mat").unlink()
    assert find_label_source(cfg) == root / "frame_labels_mini.npy"


def test_a_data_root_that_is_a_dataset_folder_or_a_file_is_refused(tmp_path, capsys):
    make_custom(tmp_path / "src")
    prepare("custom", [tmp_path / "src"], opts(tmp_path / "data"))
    err = cli(capsys, ["custom", "--src", str(tmp_path / "src"), "--data_root", str(tmp_path / "data" / "custom")])
    assert f"--data_root {tmp_path / 'data' / 'custom'} is a dataset's folder" in err
    assert f"give the folder above it, --data_root {tmp_path / 'data'}" in err
    assert not (tmp_path / "data" / "custom" / "custom").exists()
    (tmp_path / "file").write_text("x")
    err = cli(capsys, ["custom", "--src", str(tmp_path / "src"), "--data_root", str(tmp_path / "file")])
    assert "is a file, not a folder" in err


def test_a_source_with_no_videos_or_a_root_holding_another_custom_set(tmp_path, capsys):
    (tmp_path / "empty" / "training").mkdir(parents=True)
    err = cli(capsys, ["custom", "--src", str(tmp_path / "empty"), "--data_root", str(tmp_path / "data")])
    assert "empty has no videos in its training/ or testing/ folder" in err  # was: success, an empty dataset
    assert not (tmp_path / "data").exists()
    make_custom(tmp_path / "src")
    prepare("custom", [tmp_path / "src"], opts(tmp_path / "data"))
    other = tmp_path / "other"
    write_avi(other / "training" / "lobby.avi", np.zeros((5, 16, 24, 3), np.uint8))
    err = cli(capsys, ["custom", "--src", str(other), "--data_root", str(tmp_path / "data")])
    assert "frames/cam1_monday is not a video of this source (left from another run?)" in err


def test_a_damaged_frame_cache_or_manifest(tmp_path):
    root = mini_root(tmp_path)
    cfg = mini_cfg(root, tmp_path)
    VideoSet.load(cfg, "training")
    cache = next((tmp_path / "cache" / "mini" / "training").iterdir())
    cache.write_bytes(cache.read_bytes()[:100])  # cut by something other than this project (which writes atomically)
    with pytest.raises(UserError, match=r"frame cache .*\.npy is unreadable .*: delete it and run again"):
        VideoSet.load(cfg, "training")
    cache.unlink()
    (root / "mini" / "training" / "frames" / "01" / ".prepared.json").write_text("{damaged")
    assert VideoSet.load(cfg, "training").counts == [6, 6]  # an unreadable manifest: the names alone are checked


def test_a_pixel_mask_copy_cut_short_leaves_no_half_file(tmp_path, monkeypatch):
    from test_prepare import make_shanghai
    make_shanghai(tmp_path / "src")
    monkeypatch.setattr(pipeline, "_place_file", lambda src, dst, mode: (Path(dst).write_bytes(b"half"), enospc()))
    with pytest.raises(WriteFailed, match=r"cannot write pixel mask .*01_0015\.npy \(the disk is full"):
        prepare("shanghai", [tmp_path / "src"], opts(tmp_path / "data", labels_only=True, workers=1))
    masks = tmp_path / "data" / "shanghai" / "testing" / "pixel_masks"
    assert not (masks / "01_0015.npy").exists() and leftovers(tmp_path / "data") == []


@pytest.mark.parametrize("need_mb, free_mb, refused", [(10, 30, False), (10, 12, True), (400, 470, False),
                                                       (400, 465, True)])
def test_the_space_check_never_refuses_with_more_free_than_it_says_it_needs(monkeypatch, tmp_path, need_mb, free_mb,
                                                                            refused):
    """It refused 10 MB of work on 30 MB free ('needs about 10 MB but only 30 MB is free'): the 64 MB margin was
    added silently.  Now the margin is at most a quarter of the estimate, and the figure said includes it."""
    from ffpvad.data.preparation import pipeline

    monkeypatch.setattr(pipeline, "estimate_bytes", lambda *_: need_mb * 10**6)
    monkeypatch.setattr(pipeline, "free_bytes", lambda *_: free_mb * 10**6)
    opts = pipeline.Options(data_root=tmp_path)
    if not refused:
        assert pipeline.check_space([], [], opts) == need_mb * 10**6
        return
    with pytest.raises(UserError) as info:
        pipeline.check_space([], [], opts)
    said = re.search(r"needs about ([\d.]+) MB .* only ([\d.]+) MB is free", str(info.value))
    assert said and float(said.group(1)) > float(said.group(2)), str(info.value)
