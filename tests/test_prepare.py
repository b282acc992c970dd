"""tools/prepare_data.py and ffpvad/data/preparation/: small synthetic copies of each official download, prepared and checked
frame for frame and label for label; interruption and resume; bad inputs; the real UCSD and Avenue labels when
../shared is present."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io

from ffpvad.config import preset
from conftest import ROOT, shared_path
from ffpvad.data.dataset import TestSet, list_videos
from ffpvad.errors import UserError, run_cli
from ffpvad.data.labels import (frame_labels_from_masks, labels_from_ano_pred_mat, load_pixel_masks, read_interval_file,
                    read_ucsd_gt_mask_folder, write_ano_pred_mat)
from ffpvad.data.preparation import Options, pipeline, prepare

W, H = 24, 16


def frames_of(n: int, seed: int, grey: bool = False, smooth: bool = False) -> np.ndarray:
    """Random frames (BGR, or grey (n, H, W)): any order or channel mistake shows.  ``smooth``: a coarse random
    pattern upsampled, which JPEG keeps within a few grey levels."""
    rng = np.random.default_rng(seed)
    if smooth:
        coarse = rng.integers(0, 256, (n, 4, 6, 3), dtype=np.uint8)
        return np.stack([cv2.resize(c, (W, H), interpolation=cv2.INTER_LINEAR) for c in coarse])
    return rng.integers(0, 256, (n, H, W) if grey else (n, H, W, 3), dtype=np.uint8)


def mask_of(n: int, anomalous: set[int], seed: int) -> np.ndarray:
    masks = np.zeros((n, H, W), np.uint8)
    for t in anomalous:
        masks[t, seed % H, (t + seed) % W] = 255
    return masks


def write_avi(path: Path, frames: np.ndarray) -> None:
    """Lossless FFV1 .avi, so the extracted frames can be compared exactly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 25, (W, H))
    for frame in frames:
        writer.write(frame)
    writer.release()


def opts(root: Path, **changes) -> Options:
    return Options(data_root=root, image_format=changes.pop("image_format", "png"), progress=False, **changes)


def prepared(root: Path, dataset: str, split: str, video: str) -> np.ndarray:
    folder = root / dataset / split / "frames" / video
    return np.stack([cv2.imread(str(p), cv2.IMREAD_COLOR) for p in sorted(folder.iterdir())
                     if not p.name.startswith(".")])


# --- synthetic official layouts -----------------------------------------------------------------------------------

UCSD_TRAIN, UCSD_TEST = (4, 3), (5, 4, 6)
UCSD_INTERVALS = ([(2, 4)], [(1, 4)], [(1, 2), (5, 6)])  # 1-based inclusive, as in UCSDped2.m


def make_ucsd(src: Path, masks_disagree: bool = False, subset: str = "ped2", masked: tuple = (1, 2, 3)) -> dict:
    """UCSD_Anomaly_Dataset.v1p2/UCSDped2: Train0NN/NNN.tif, Test0NN/NNN.tif, UCSDped2.m, Test0NN_gt masks (one
    folder with the frame001.bmp naming quirk) and macOS debris.  Ped1 has masks for some test videos only."""
    base = src / "UCSD_Anomaly_Dataset.v1p2" / f"UCSD{subset}"
    out = {"training": {}, "testing": {}, "labels": {}, "masks": {}}
    for split, sub, counts in (("training", "Train", UCSD_TRAIN), ("testing", "Test", UCSD_TEST)):
        for v, n in enumerate(counts, start=1):
            folder = base / sub / f"{sub}{v:03d}"
            folder.mkdir(parents=True)
            frames = frames_of(n, seed=10 * v + len(sub), grey=True)
            for t, frame in enumerate(frames, start=1):
                cv2.imwrite(str(folder / f"{t:03d}.tif"), frame)
            (folder / "._001.tif").write_bytes(b"\x00\x05\x16\x07 mac resource fork")
            (folder / ".DS_Store").write_bytes(b"junk")
            out[split][f"{v:02d}"] = np.repeat(frames[..., None], 3, axis=3)
    lines = ["TestVideoFile = {};"]
    for v, (n, spans) in enumerate(zip(UCSD_TEST, UCSD_INTERVALS), start=1):
        lines.append("TestVideoFile{end+1}.gt_frame = [" + ", ".join(f"{a}:{b}" for a, b in spans) + "];")
        labels = np.zeros(n, np.int64)
        for a, b in spans:
            labels[a - 1:b] = 1
        anomalous = set(np.flatnonzero(labels))
        if masks_disagree and v == 2:
            anomalous -= {0}
        masks = mask_of(n, anomalous, seed=v)
        out["labels"][f"{v:02d}"], out["masks"][f"{v:02d}"] = labels, masks > 0
        if v not in masked:
            continue
        gt = base / "Test" / f"Test{v:03d}_gt"
        gt.mkdir()
        for t, mask in enumerate(masks, start=1):
            cv2.imwrite(str(gt / (f"frame{t:03d}.bmp" if v == 2 else f"{t:03d}.bmp")), mask)
        (gt / "._001.bmp").write_bytes(b"junk")
    (base / "Test" / f"UCSD{subset}.m").write_text("\n".join(lines) + "\n")
    (base / "Test" / ".DS_Store").write_bytes(b"junk")
    return out


AVENUE_TRAIN, AVENUE_TEST = (5, 4), (6, 5)


def make_avenue(src: Path) -> dict:
    """'Avenue Dataset/{training,testing}_videos/NN.avi' and ground_truth_demo/testing_label_mask/<n>_label.mat."""
    out = {"training": {}, "testing": {}, "masks": {}}
    for split, counts in (("training", AVENUE_TRAIN), ("testing", AVENUE_TEST)):
        for v, n in enumerate(counts, start=1):
            frames = frames_of(n, seed=100 * v + n)
            write_avi(src / "Avenue Dataset" / f"{split}_videos" / f"{v:02d}.avi", frames)
            out[split][f"{v:02d}"] = frames
    mask_dir = src / "ground_truth_demo" / "testing_label_mask"
    mask_dir.mkdir(parents=True)
    for v, n in enumerate(AVENUE_TEST, start=1):
        masks = mask_of(n, {1, 2} if v == 1 else {n - 1}, seed=v) // 255  # volLabel holds 0/1
        cell = np.empty((1, n), dtype=object)
        for t in range(n):
            cell[0, t] = masks[t]
        scipy.io.savemat(str(mask_dir / f"{v}_label.mat"), {"volLabel": cell})
        out["masks"][f"{v:02d}"] = masks > 0
    return out


def make_shanghai(src: Path) -> dict:
    """training/videos/NN_NNN.avi, testing/frames/NN_NNNN/NNN.jpg, test_frame_mask/ and test_pixel_mask/ .npy."""
    out = {"training": {}, "testing": {}, "labels": {}, "masks": {}}
    for name, n in (("01_001", 5), ("02_001", 4)):
        frames = frames_of(n, seed=n, smooth=True)
        write_avi(src / "training" / "videos" / f"{name}.avi", frames)
        out["training"][name] = frames
    for k, (name, n) in enumerate((("01_0014", 6), ("01_0015", 5))):
        folder = src / "testing" / "frames" / name
        folder.mkdir(parents=True)
        for t, frame in enumerate(frames_of(n, seed=7 + k)):
            cv2.imwrite(str(folder / f"{t:03d}.jpg"), frame)
        labels = np.zeros(n, np.uint8)
        labels[2:4] = 1
        masks = mask_of(n, {2, 3}, seed=k) // 255  # 01_0014 as bool (converted), 01_0015 as uint8 0/1 (linked)
        masks = masks.astype(bool) if k == 0 else masks
        for sub, array in (("test_frame_mask", labels), ("test_pixel_mask", masks)):
            (src / "testing" / sub).mkdir(parents=True, exist_ok=True)
            np.save(src / "testing" / sub / f"{name}.npy", array)
        out["testing"][name], out["labels"][name], out["masks"][name] = folder, labels, masks
    return out


def make_custom(src: Path) -> dict:
    """A user's folder: training/ and testing/ videos (one a folder of frames), labels.csv."""
    out = {"training": {}, "testing": {}}
    for split, name, n, seed in (("training", "cam1_monday", 6, 1), ("testing", "cam1_tuesday", 7, 2)):
        frames = frames_of(n, seed)
        write_avi(src / split / f"{name}.avi", frames)
        out[split][name] = frames
    folder = src / "testing" / "cam2 night"
    folder.mkdir()
    frames = frames_of(5, 3)
    for t, frame in enumerate(frames, start=1):
        cv2.imwrite(str(folder / f"img_{t}.png"), frame)  # img_1 .. img_5: natural order, not 0-padded
    out["testing"]["cam2 night"] = frames
    (src / "labels.csv").write_text("video,start,end\n# anomalous intervals, 0-based, inclusive\n"
                                    "cam1_tuesday.avi, 2, 3\ncam1_tuesday,6,6\n\"cam2 night\",0,1\n")
    out["labels"] = {"cam1_tuesday": [0, 0, 1, 1, 0, 0, 1], "cam2 night": [1, 1, 0, 0, 0]}
    return out


# --- the mask readers other code imports ---------------------------------------------------------------------------

def test_ucsd_gt_mask_folder_reader_handles_both_namings(tmp_path):
    for folder, names in (("a", ["001", "002", "010", "003", "004", "005", "006", "007", "008", "009"]),
                          ("b", [f"frame{t:03d}" for t in range(1, 11)])):
        (tmp_path / folder).mkdir()
        for name in names:
            mask = np.zeros((4, 6), np.uint8)
            mask[0, 0] = 255 * (int(name[-3:]) % 2)
            cv2.imwrite(str(tmp_path / folder / f"{name}.bmp"), mask)
        (tmp_path / folder / "._001.bmp").write_bytes(b"junk")
        masks = read_ucsd_gt_mask_folder(tmp_path / folder)
        assert masks.dtype == bool and masks.shape == (10, 4, 6)
        assert masks[:, 0, 0].tolist() == [t % 2 == 1 for t in range(1, 11)]  # numeric order, 010 last
    (tmp_path / "a" / "005.bmp").unlink()
    with pytest.raises(UserError, match=r"not contiguous .*missing \[5\]"):
        read_ucsd_gt_mask_folder(tmp_path / "a")


def test_load_pixel_masks_reads_the_layout_and_names_what_is_missing(tmp_path):
    with pytest.raises(UserError, match="no pixel masks for ped2"):
        load_pixel_masks(tmp_path, "ped2", ["01"])
    folder = tmp_path / "ped2" / "testing" / "pixel_masks"
    folder.mkdir(parents=True)
    np.save(folder / "01.npy", np.ones((3, 2, 2), np.uint8))
    (mask,) = load_pixel_masks(tmp_path, "ped2", ["01"], counts=[3])
    assert mask.shape == (3, 2, 2) and mask.dtype == np.uint8
    with pytest.raises(UserError, match="has 3 frames but test video 01 has 4"):
        load_pixel_masks(tmp_path, "ped2", ["01"], counts=[4])
    with pytest.raises(UserError, match=r"no pixel mask .*02\.npy"):
        load_pixel_masks(tmp_path, "ped2", ["01", "02"])


# --- each dataset, frame for frame and label for label ---------------------------------------------------------------

def test_ped2_from_the_official_folder(tmp_path):
    truth = make_ucsd(tmp_path / "src")
    root = tmp_path / "data"
    summary = prepare("ped2", [tmp_path / "src"], opts(root))
    for split in ("training", "testing"):
        names = sorted(p.name for p in (root / "ped2" / split / "frames").iterdir())
        assert names == sorted(truth[split])  # Train001 -> 01; no partial or hidden folders left
        for name, frames in truth[split].items():
            files = sorted(p.name for p in (root / "ped2" / split / "frames" / name).iterdir() if p.name[0] != ".")
            assert files == [f"{t:03d}.png" for t in range(len(frames))]
            assert np.array_equal(prepared(root, "ped2", split, name), frames)
    counts = list(UCSD_TEST)
    labels = labels_from_ano_pred_mat(root / "ped2" / "ped2.mat", counts)
    assert [y.tolist() for y in labels] == [truth["labels"][n].tolist() for n in ("01", "02", "03")]
    masks = load_pixel_masks(root, "ped2", ["01", "02", "03"], counts)
    for name, mask in zip(("01", "02", "03"), masks):
        assert np.array_equal(mask, truth["masks"][name].astype(np.uint8))  # incl. the frame001.bmp folder
    text = "\n".join(summary.lines())
    assert "UCSDped2.m and the Test0NN_gt pixel masks agree on all 15 frames" in text
    assert "testing: 3 videos, 15 frames, 11 anomalous  -- differs from published (12 / 2,010 / 1,648)" in text
    # what eval.py does with --dataset=ped2 --data_root=<root> and no other flag
    test_set = TestSet.load(preset("ped2").replace(data_root=str(root), cache_dir=str(tmp_path / "c"), img_size=16))
    assert test_set.label_source == root / "ped2" / "ped2.mat"
    assert [y.tolist() for y in test_set.labels] == [y.tolist() for y in labels]


def test_ped2_from_the_tar_gz_as_jpeg(tmp_path):
    make_ucsd(tmp_path / "src")
    archive = tmp_path / "UCSD_Anomaly_Dataset.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "UCSD_Anomaly_Dataset.v1p2", arcname="UCSD_Anomaly_Dataset.v1p2")
    before = archive.read_bytes()
    root = tmp_path / "data"
    prepare("ped2", [archive], opts(root, image_format="jpg"))
    assert archive.read_bytes() == before
    assert not (root / ".prepare").exists()  # the extracted copy is removed
    image = cv2.imread(str(root / "ped2" / "testing" / "frames" / "03" / "005.jpg"), cv2.IMREAD_UNCHANGED)
    assert image.shape == (H, W, 3) and (image[..., 0] == image[..., 2]).all()  # grey as 3 equal channels
    assert [len(v.frames) for v in list_videos(root / "ped2" / "testing" / "frames")] == list(UCSD_TEST)


def test_ped1_from_a_tar_holding_both_subsets_with_masks_for_some_videos(tmp_path):
    truth = make_ucsd(tmp_path / "src", subset="ped1", masked=(2,))
    make_ucsd(tmp_path / "src", subset="ped2")
    archive = tmp_path / "UCSD_Anomaly_Dataset.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "UCSD_Anomaly_Dataset.v1p2", arcname="UCSD_Anomaly_Dataset.v1p2")
    root = tmp_path / "data"
    summary = prepare("ped1", [archive], opts(root, keep_extracted=True))
    staged = root / ".prepare" / "ped1" / archive.name / "UCSD_Anomaly_Dataset.v1p2"
    assert sorted(p.name for p in staged.iterdir()) == ["UCSDped1"]  # only the requested subset is extracted
    labels = labels_from_ano_pred_mat(root / "ped1" / "ped1.mat", list(UCSD_TEST))
    assert [y.tolist() for y in labels] == [truth["labels"][n].tolist() for n in ("01", "02", "03")]
    assert sorted(p.name for p in (root / "ped1" / "testing" / "pixel_masks").iterdir()) == ["02.npy"]
    assert "UCSDped1.m and the Test0NN_gt pixel masks agree on all 4 frames of 1 videos" in summary.notes
    assert np.array_equal(prepared(root, "ped1", "testing", "03"), truth["testing"]["03"])


def test_avenue_from_the_two_zip_downloads(tmp_path):
    make_avenue(tmp_path / "src")
    zips = []
    for folder in ("Avenue Dataset", "ground_truth_demo"):
        zips.append(Path(shutil.make_archive(str(tmp_path / folder.replace(" ", "_")), "zip", tmp_path / "src",
                                             folder)))
    summary = prepare("avenue", zips, opts(tmp_path / "data"))
    assert summary.splits == {"training": (2, 9), "testing": (2, 11)} and summary.anomalous == 3
    assert not (tmp_path / "data" / ".prepare").exists()


def test_ucsd_m_file_and_masks_that_disagree_are_reported(tmp_path):
    make_ucsd(tmp_path / "src", masks_disagree=True)
    summary = prepare("ped2", [tmp_path / "src"], opts(tmp_path / "data", labels_only=True))
    assert any("DISAGREE on 1 of 15 frames (02: 1)" in n for n in summary.notes)
    assert summary.anomalous == 11  # the .m file's labels are the ones written
    assert not (tmp_path / "data" / "ped2" / "testing" / "frames").exists()  # labels only


def test_avenue_videos_and_volLabel_masks(tmp_path):
    truth = make_avenue(tmp_path / "src")
    root = tmp_path / "data"
    sources = [tmp_path / "src" / "Avenue Dataset", tmp_path / "src" / "ground_truth_demo"]
    summary = prepare("avenue", sources, opts(root, workers=2))
    for split in ("training", "testing"):
        for name, frames in truth[split].items():
            assert np.array_equal(prepared(root, "avenue", split, name), frames)
    assert list_videos(root / "avenue" / "testing" / "frames")[0].frames[0].name == "0000.png"  # ano_pred's naming
    masks = load_pixel_masks(root, "avenue", ["01", "02"], list(AVENUE_TEST))
    assert all(np.array_equal(m, truth["masks"][n]) for m, n in zip(masks, ("01", "02")))
    labels = labels_from_ano_pred_mat(root / "avenue" / "avenue.mat", list(AVENUE_TEST))
    assert [y.tolist() for y in labels] == [[0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 1]]
    assert summary.convention == "masks" and any("--labels" in n for n in summary.notes)
    # an ano_pred avenue.mat given by the user replaces the mask labels
    user = tmp_path / "avenue.mat"
    write_ano_pred_mat(user, [np.array([1, 1, 1, 0, 0, 0]), np.array([0, 0, 0, 0, 1])])
    summary = prepare("avenue", sources, opts(root, labels=user))
    assert summary.anomalous == 4 and summary.written == 0
    assert any("DISAGREE on 1 of 11 frames (01: 1)" in n for n in summary.notes)
    assert labels_from_ano_pred_mat(root / "avenue" / "avenue.mat", list(AVENUE_TEST))[0].tolist() == [1, 1, 1, 0, 0, 0]


def test_shanghaitech_videos_linked_test_frames_and_masks(tmp_path):
    truth = make_shanghai(tmp_path / "src")
    root = tmp_path / "data"
    summary = prepare("shanghaitech", [tmp_path / "src"], opts(root, image_format="jpg"))
    for name, frames in truth["training"].items():
        got = prepared(root, "shanghai", "training", name)
        grey = [np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in x]).astype(int) for x in (got, frames)]
        assert got.shape == frames.shape and np.abs(grey[0] - grey[1]).mean() < 3  # JPEG q95, 4:2:0
    for name, folder in truth["testing"].items():
        out = root / "shanghai" / "testing" / "frames" / name
        for src in sorted(folder.iterdir()):
            assert (out / src.name).read_bytes() == src.read_bytes()  # unchanged, not re-encoded
            assert (out / src.name).stat().st_ino == src.stat().st_ino  # hard-linked (same file system)
    test_set = TestSet.load(preset("shanghai").replace(data_root=str(root), cache_dir=str(tmp_path / "c"),
                                                      img_size=16))
    assert test_set.label_source == root / "shanghai" / "testing" / "test_frame_mask"
    assert [y.tolist() for y in test_set.labels] == [truth["labels"][n].tolist() for n in ("01_0014", "01_0015")]
    masks = load_pixel_masks(root, "shanghai", ["01_0014", "01_0015"])
    assert all(np.array_equal(m, truth["masks"][n].astype(np.uint8)) for m, n in zip(masks, ("01_0014", "01_0015")))
    linked = root / "shanghai" / "testing" / "pixel_masks" / "01_0015.npy"
    assert linked.stat().st_ino == (tmp_path / "src" / "testing" / "test_pixel_mask" / "01_0015.npy").stat().st_ino
    assert summary.anomalous == 4


def test_custom_videos_frame_folders_and_interval_labels(tmp_path):
    truth = make_custom(tmp_path / "src")
    root = tmp_path / "data"
    prepare("custom", [tmp_path / "src"], opts(root))
    for split in ("training", "testing"):
        for name, frames in truth[split].items():
            assert np.array_equal(prepared(root, "custom", split, name), frames)
    test_set = TestSet.load(preset("custom").replace(data_root=str(root), cache_dir=str(tmp_path / "c"), img_size=16))
    assert test_set.videos.names == ["cam1_tuesday", "cam2 night"]
    assert [y.tolist() for y in test_set.labels] == [truth["labels"][n] for n in test_set.videos.names]


def test_interval_file_errors_name_the_line(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("a 1 2\na 3\n")
    with pytest.raises(UserError, match=r"labels.txt:2: expected 'video, first frame, last frame'"):
        read_interval_file(path)
    make_custom(tmp_path / "src")
    (tmp_path / "src" / "labels.csv").write_text("cam3,0,1\n")
    with pytest.raises(UserError, match="'cam3' is not a test video"):
        prepare("custom", [tmp_path / "src"], opts(tmp_path / "data"))
    (tmp_path / "src" / "labels.csv").write_text("cam1_tuesday,5,7\n")
    with pytest.raises(UserError, match="goes past its last frame 6"):
        prepare("custom", [tmp_path / "src"], opts(tmp_path / "data"))


# --- interruption, resume, idempotence --------------------------------------------------------------------------------

def test_interrupted_run_resumes_without_redoing_finished_videos(tmp_path, monkeypatch):
    truth = make_ucsd(tmp_path / "src")
    root = tmp_path / "data"
    real_write = pipeline.write_image
    calls = []

    def crash_at_call_10(path, image, *args):
        calls.append(path)
        if len(calls) == 10:  # inside the third video (4 + 3 frames before it)
            raise KeyboardInterrupt
        real_write(path, image, *args)

    monkeypatch.setattr(pipeline, "write_image", crash_at_call_10)
    with pytest.raises(KeyboardInterrupt):
        prepare("ped2", [tmp_path / "src"], opts(root, workers=1))
    train = root / "ped2" / "training" / "frames"
    assert sorted(p.name for p in train.iterdir()) == ["01", "02"]  # no half video, not even a hidden one
    # a hard kill leaves a partial folder behind: the next run removes it
    (train / ".partial-03").mkdir()
    (train / ".partial-03" / "000.png").write_bytes(b"half")
    calls.clear()
    monkeypatch.setattr(pipeline, "write_image", lambda p, i, *a: (calls.append(p), real_write(p, i, *a)))
    summary = prepare("ped2", [tmp_path / "src"], opts(root, workers=2))
    assert len(calls) == sum(UCSD_TEST) and summary.written == 3  # only the test videos were written
    assert sorted(p.name for p in train.iterdir()) == ["01", "02"]
    for split in ("training", "testing"):
        for name, frames in truth[split].items():
            assert np.array_equal(prepared(root, "ped2", split, name), frames)
    calls.clear()
    summary = prepare("ped2", [tmp_path / "src"], opts(root))
    assert calls == [] and summary.written == 0  # a finished run is not redone
    # a changed source video is redone, the others are not
    frame = tmp_path / "src" / "UCSD_Anomaly_Dataset.v1p2" / "UCSDped2" / "Train" / "Train002" / "003.tif"
    cv2.imwrite(str(frame), np.zeros((H, W), np.uint8), [cv2.IMWRITE_TIFF_COMPRESSION, 1])
    summary = prepare("ped2", [tmp_path / "src"], opts(root))
    assert summary.written == 1 and len(calls) == UCSD_TRAIN[1]
    assert prepared(root, "ped2", "training", "02")[2].max() == 0


def test_a_folder_not_written_by_the_tool_with_the_wrong_length_is_refused(tmp_path):
    make_ucsd(tmp_path / "src")
    foreign = tmp_path / "data" / "ped2" / "training" / "frames" / "01"
    foreign.mkdir(parents=True)
    cv2.imwrite(str(foreign / "000.jpg"), np.zeros((H, W, 3), np.uint8))
    with pytest.raises(UserError, match=r"frames/01 exists but was not written by prepare_data .*has 1 frames, "
                                        r"expected 4 frames"):
        prepare("ped2", [tmp_path / "src"], opts(tmp_path / "data"))
    for t in range(1, 4):  # with the right length (e.g. from ped2.tar.gz) it is kept, and the summary says so
        cv2.imwrite(str(foreign / f"{t:03d}.jpg"), np.zeros((H, W, 3), np.uint8))
    summary = prepare("ped2", [tmp_path / "src"], opts(tmp_path / "data"))
    assert summary.written == 4 and any("1 video folders already present" in n for n in summary.notes)
    assert not (foreign / ".prepared.json").exists()


# --- bad inputs: one line naming the file --------------------------------------------------------------------------

def test_short_avenue_video_is_named_not_truncated(tmp_path):
    make_avenue(tmp_path / "src")
    write_avi(tmp_path / "src" / "Avenue Dataset" / "testing_videos" / "02.avi", frames_of(3, 0))
    with pytest.raises(UserError, match=r"02\.avi gives 3 frames but 5 were expected .*the other videos are done"):
        prepare("avenue", [tmp_path / "src"], opts(tmp_path / "data"))
    assert not (tmp_path / "data" / "avenue" / "testing" / "frames" / "02").exists()
    assert (tmp_path / "data" / "avenue" / "testing" / "frames" / "01").is_dir()


def test_bad_inputs_are_one_clear_error(tmp_path):
    make_avenue(tmp_path / "src")
    mask = tmp_path / "src" / "ground_truth_demo" / "testing_label_mask" / "2_label.mat"
    scipy.io.savemat(str(mask), {"labels": np.zeros((1, 5))})
    with pytest.raises(UserError, match=r"2_label\.mat has no variable 'volLabel' \(found: labels\)"):
        prepare("avenue", [tmp_path / "src"], opts(tmp_path / "data"))
    mask.unlink()
    with pytest.raises(UserError, match=r"no mask file .*2_label\.mat for test video .*02\.avi"):
        prepare("avenue", [tmp_path / "src"], opts(tmp_path / "data"))
    with pytest.raises(UserError, match=r"no UCSDped2 folder with Train/ and Test/ .* is --src the official"):
        prepare("ped2", [tmp_path / "src"], opts(tmp_path / "data"))
    (tmp_path / "custom" / "testing").mkdir(parents=True)
    (tmp_path / "custom" / "testing" / "clip.mp4").write_bytes(b"not a video at all")
    with pytest.raises(UserError, match=r"cannot read video .*clip\.mp4 with OpenCV"):
        prepare("custom", [tmp_path / "custom"], opts(tmp_path / "data"))


def test_not_enough_disk_space_stops_before_writing(tmp_path, monkeypatch):
    make_ucsd(tmp_path / "src")
    monkeypatch.setattr(pipeline, "free_bytes", lambda path: 1000)
    with pytest.raises(UserError, match=r"preparing needs about .* but only 1\.0 KB is free"):
        prepare("ped2", [tmp_path / "src"], opts(tmp_path / "data"))
    assert not (tmp_path / "data" / "ped2" / "training").exists()


def test_cli_error_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    from ffpvad.commands.prepare_data import main
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: main(["ped2", "--src", str(tmp_path / "nowhere"), "--data_root", str(tmp_path)]))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: --src ") and "nowhere does not exist" in err


def test_cli_prepares_a_custom_folder(tmp_path):
    make_custom(tmp_path / "src")
    run = subprocess.run([sys.executable, "tools/prepare_data.py", "custom", "--src", str(tmp_path / "src"),
                          "--data_root", str(tmp_path / "data"), "--no_progress"], cwd=ROOT, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    assert "testing: 2 videos, 12 frames, 5 anomalous" in run.stdout
    assert "next: python train.py --dataset=custom" in run.stdout
    assert "note: " not in run.stdout  # both test videos have labelled intervals


# --- corrupt .npy files: one line naming the file and what to do -----------------------------------------------------

def write_corrupt_npy(path: Path, kind: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "object":  # a pickled object array: never unpickled
        np.save(path, np.array([np.zeros(2), np.zeros(3)], dtype=object), allow_pickle=True)
    elif kind == "garbage":
        path.write_bytes(b"not an array at all \x00\x01\x02")
    elif kind == "empty":
        path.write_bytes(b"")
    else:  # truncated: a crash or a full disk while it was written
        np.save(path, np.ones((6, H, W), np.uint8))
        path.write_bytes(path.read_bytes()[:200])


def assert_one_line_naming(info, path: Path, fix: str) -> None:
    message = str(info.value)
    assert "\n" not in message and str(path) in message and fix in message, message
    assert "allow_pickle" not in message  # numpy's advice to load it unsafely is not passed on


@pytest.mark.parametrize("kind", ["object", "garbage", "empty", "truncated"])
def test_a_corrupt_npy_mask_is_one_user_error_naming_the_file(tmp_path, kind):
    from ffpvad.data.labels import load_labels
    from ffpvad.evaluation.localization import pixel_mask_source

    frame_masks = tmp_path / "test_frame_mask"  # ShanghaiTech frame labels
    frame_masks.mkdir()
    np.save(frame_masks / "01.npy", np.zeros(6, np.uint8))
    write_corrupt_npy(frame_masks / "02.npy", kind)
    with pytest.raises(UserError, match=r"cannot read frame mask .*02\.npy as \.npy") as info:
        load_labels(frame_masks, ["01", "02"], [6, 6])
    assert_one_line_naming(info, frame_masks / "02.npy", "prepare the dataset again")

    prepared = tmp_path / "data" / "ped2" / "testing" / "pixel_masks" / "01.npy"  # the prepared layout
    write_corrupt_npy(prepared, kind)
    for mmap in (True, False):
        with pytest.raises(UserError, match=r"cannot read pixel mask .*01\.npy as \.npy") as info:
            load_pixel_masks(tmp_path / "data", "ped2", ["01"], [6], mmap=mmap)
        assert_one_line_naming(info, prepared, "prepare the dataset again")

    given = tmp_path / "masks" / "01.npy"  # eval.py --pixel_masks=<folder>
    write_corrupt_npy(given, kind)
    with pytest.raises(UserError, match=r"cannot read pixel mask .*01\.npy as \.npy") as info:
        pixel_mask_source("", "ped2", ["01"], [6], str(given.parent))
    assert_one_line_naming(info, given, "replace it")

    make_shanghai(tmp_path / "src")  # ShanghaiTech's own test_pixel_mask, read while planning
    source = tmp_path / "src" / "testing" / "test_pixel_mask" / "01_0014.npy"
    write_corrupt_npy(source, kind)
    with pytest.raises(UserError, match=r"cannot read pixel mask .*01_0014\.npy as \.npy") as info:
        prepare("shanghai", [tmp_path / "src"], opts(tmp_path / "out"))
    assert_one_line_naming(info, source, "re-download")


def test_a_pickled_label_file_is_never_loaded(tmp_path):
    from ffpvad.data.labels import labels_from_concatenated_npy

    path = tmp_path / "frame_labels_ped2.npy"
    write_corrupt_npy(path, "object")
    with pytest.raises(UserError, match=r"frame_labels_ped2\.npy as \.npy \(it holds pickled Python objects"):
        labels_from_concatenated_npy(path, [1, 1])


# --- the source is only ever read (issue #20) -----------------------------------------------------------------------

def cli_error(monkeypatch, capsys, argv: list[str]) -> str:
    """The one line tools/prepare_data.py prints for ``argv`` (exit 2, no traceback)."""
    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    from ffpvad.commands.prepare_data import main
    capsys.readouterr()  # what ran before
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: main(argv + ["--no_progress"]))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_a_data_root_inside_a_source_is_refused(tmp_path, monkeypatch, capsys):
    make_ucsd(tmp_path / "src")
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "src").rglob("*"))
    for data_root in (tmp_path / "src" / "prepared", tmp_path / "src", tmp_path / "src" / "UCSD_Anomaly_Dataset.v1p2"):
        err = cli_error(monkeypatch, capsys, ["ped2", "--src", str(tmp_path / "src"), "--data_root", str(data_root)])
        assert f"--data_root {data_root} is inside --src {tmp_path / 'src'}" in err
        assert "choose a --data_root outside the source" in err
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "src").rglob("*")) == before  # nothing written
    # the other way round, as before: a source inside the output
    err = cli_error(monkeypatch, capsys, ["ped2", "--src", str(tmp_path / "data" / "ped2" / "x"),
                                          "--data_root", str(tmp_path / "data")])
    assert "is inside the output" in err


def test_a_source_already_in_the_prepared_layout_needs_no_preparation(tmp_path, monkeypatch, capsys):
    make_ucsd(tmp_path / "src")
    prepare("ped2", [tmp_path / "src"], opts(tmp_path / "data"))
    for src in (tmp_path / "data" / "ped2", tmp_path / "data"):  # the <dataset> folder, and the folder above it
        for dataset in ("ped2", "custom"):
            err = cli_error(monkeypatch, capsys, [dataset, "--src", str(src), "--data_root", str(tmp_path / "out")])
            assert f"--src {src} is already in the prepared layout ({tmp_path / 'data' / 'ped2'}/" in err
            assert f"such a tree needs no preparation: point --data_root at {tmp_path / 'data'}" in err
    # the public ped2.tar.gz layout (no manifest), as a folder and as the archive itself
    public = tmp_path / "public" / "ped2" / "training" / "frames" / "01"
    public.mkdir(parents=True)
    cv2.imwrite(str(public / "000.jpg"), np.zeros((H, W, 3), np.uint8))
    err = cli_error(monkeypatch, capsys, ["ped2", "--src", str(tmp_path / "public"),
                                          "--data_root", str(tmp_path / "out")])
    assert "needs no preparation: point --data_root at " + str(tmp_path / "public") in err
    archive = tmp_path / "ped2.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "public" / "ped2", arcname="ped2")
    err = cli_error(monkeypatch, capsys, ["ped2", "--src", str(archive), "--data_root", str(tmp_path / "out")])
    assert "holds a tree already in the prepared layout (ped2/training/frames/" in err
    assert "needs no preparation: extract it and point --data_root at the folder holding ped2/" in err
    assert not (tmp_path / "out").exists()  # nothing extracted
    # ShanghaiTech's official testing/frames/<video>/ alone is not the prepared layout
    make_shanghai(tmp_path / "shanghaitech")
    assert prepare("shanghai", [tmp_path / "shanghaitech"], opts(tmp_path / "out")).splits["testing"] == (2, 11)


# --- the real official label files (../shared) ------------------------------------------------------------------------

def test_real_ucsd_m_and_gt_masks_give_ped2_mat(tmp_path):
    with tarfile.open(shared_path("data", "ucsd_official_sample.tar.gz")) as archive:
        archive.extractall(tmp_path / "src", filter="data")  # .m files and the 12 Test0NN_gt folders, no tif
    root = tmp_path / "data"
    summary = prepare("ped2", [tmp_path / "src"], opts(root, labels_only=True, workers=2))
    counts = [180, 180, 150, 180, 150, 180, 180, 180, 120, 150, 180, 180]
    reference = np.concatenate(labels_from_ano_pred_mat(shared_path("data", "labels", "ped2.mat"), counts))
    written = np.concatenate(labels_from_ano_pred_mat(root / "ped2" / "ped2.mat", counts))
    assert len(reference) == 2010 and np.array_equal(written, reference)
    names = [f"{v:02d}" for v in range(1, 13)]
    from_masks = [frame_labels_from_masks(m) for m in load_pixel_masks(root, "ped2", names, counts)]
    assert np.array_equal(np.concatenate(from_masks), reference)
    assert "UCSDped2.m and the Test0NN_gt pixel masks agree on all 2,010 frames of 12 videos" in summary.notes
    assert "testing: 12 videos, 2,010 frames, 1,648 anomalous  -- matches published" in "\n".join(summary.lines())


def test_real_avenue_volLabel_masks_convert(tmp_path):
    folder = tmp_path / "ground_truth_demo" / "testing_label_mask"
    folder.mkdir(parents=True)
    for n in (8, 21):  # the two small official files (1_label.mat takes 2 s to load)
        (folder / f"{n}_label.mat").symlink_to(shared_path("data", "avenue_labels_sample", "ground_truth_demo",
                                                           "testing_label_mask", f"{n}_label.mat"))
    root = tmp_path / "data"
    summary = prepare("avenue", [tmp_path / "ground_truth_demo"], opts(root, labels_only=True))
    masks = load_pixel_masks(root, "avenue", ["08", "21"], [36, 76])
    assert [m.shape for m in masks] == [(36, 360, 640), (76, 360, 640)]
    labels = labels_from_ano_pred_mat(root / "avenue" / "avenue.mat", [36, 76])
    assert [int(y.sum()) for y in labels] == [36, 53]
