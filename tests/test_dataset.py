"""Datasets: layout, cache, clips, sampler, every label format, bad input, and the real Ped2 when present."""
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
import torch

from ffpvad.config import preset
from conftest import shared_path
from ffpvad.data.dataset import (ClipSampler, TestSet, TrainClips, VideoSet, cached_frames, iter_test_batches, list_videos,
                     n_predicted_frames, to_model_range)
from ffpvad.errors import UserError
from ffpvad.data.labels import (labels_from_ano_pred_mat, labels_from_concatenated_npy, labels_from_mask_folder,
                    labels_from_ucsd_gt_masks, labels_from_ucsd_m, load_labels)


def write_video(folder: Path, n: int, size=(24, 16), seed=0) -> np.ndarray:
    """Frames whose pixel value encodes the frame index, so order mistakes show."""
    folder.mkdir(parents=True)
    frames = np.stack([np.full((size[1], size[0], 3), 10 * t + seed, np.uint8) for t in range(n)])
    frames[..., 0] += 1  # distinct R and B: a channel-order mistake shows
    for t, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{t:03d}.png"), frame[..., ::-1])  # write BGR, as files are
    return frames


@pytest.fixture
def tiny_dataset(tmp_path):
    root = tmp_path / "data"
    for split, counts in (("training", (7, 9)), ("testing", (8, 6, 10))):
        for v, n in enumerate(counts):
            write_video(root / "mini" / split / "frames" / f"{v + 1:02d}", n, seed=v)
    return root


def mini_cfg(root, tmp_path, **changes):
    return preset("ped2").replace(dataset="mini", data_root=str(root), cache_dir=str(tmp_path / "cache"),
                                  img_size=16, **changes)


def test_list_videos_in_natural_order(tmp_path):
    for name in ("10", "2", "1"):
        write_video(tmp_path / name, 3)
    assert [v.name for v in list_videos(tmp_path)] == ["1", "2", "10"]


def test_cache_decodes_once_in_rgb_and_in_order(tiny_dataset, tmp_path):
    videos = list_videos(tiny_dataset / "mini" / "testing" / "frames")
    arrays = cached_frames(videos, 16, tmp_path / "c")
    assert [a.shape for a in arrays] == [(8, 16, 16, 3), (6, 16, 16, 3), (10, 16, 16, 3)]
    assert arrays[0][5, 0, 0].tolist() == [51, 50, 50]  # R = 10*5 + 1: RGB order, frame 5 in place 5
    assert isinstance(arrays[0], np.memmap)
    mtimes = sorted(p.stat().st_mtime_ns for p in (tmp_path / "c").iterdir())
    cached_frames(videos, 16, tmp_path / "c")  # second call reuses the files
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "c").iterdir()) == mtimes


def test_training_clips_and_model_range(tiny_dataset, tmp_path):
    clips = TrainClips(VideoSet.load(mini_cfg(tiny_dataset, tmp_path), "training"), clip_len=5)
    assert len(clips) == (7 - 4) + (9 - 4)
    batch = clips.batch([0, 3])  # video 1 start 0, video 2 start 0
    assert batch.shape == (2, 5, 16, 16, 3) and batch.dtype == torch.uint8
    assert batch[0, :, 0, 0, 1].tolist() == [0, 10, 20, 30, 40]
    assert batch[1, :, 0, 0, 1].tolist() == [1, 11, 21, 31, 41]
    x = to_model_range(batch)
    assert x.shape == (2, 5, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert x[0, 0, 1, 0, 0].item() == pytest.approx(-1.0)


def test_test_batches_cover_every_predictable_frame_once(tiny_dataset, tmp_path):
    videos = VideoSet.load(mini_cfg(tiny_dataset, tmp_path), "testing")
    seen = {}
    for v, targets, clips in iter_test_batches(videos, 5, batch_size=3):
        assert clips.shape[1] == 5
        assert clips[:, -1, 0, 0, 1].tolist() == [10 * t + v for t in targets]  # the target is frame t
        seen.setdefault(v, []).extend(targets.tolist())
    assert seen == {0: [4, 5, 6, 7], 1: [4, 5], 2: [4, 5, 6, 7, 8, 9]}
    assert n_predicted_frames(videos, 5) == 12


def test_sampler_is_a_reproducible_shuffle_with_exact_state():
    a = ClipSampler(10, 3, seed=1)
    first_epoch = [a.next_batch() for _ in range(3)]
    assert sorted(np.concatenate(first_epoch).tolist()) == sorted(set(np.concatenate(first_epoch).tolist()))
    state = a.state_dict()
    rest = [a.next_batch().tolist() for _ in range(5)]
    b = ClipSampler(10, 3, seed=1)
    b.load_state_dict(state)
    assert [b.next_batch().tolist() for _ in range(5)] == rest
    assert a.epoch >= 2  # an incomplete last batch starts the next epoch


def test_ano_pred_mat_labels(tmp_path):
    gt = np.empty((1, 2), dtype=object)
    gt[0, 0] = np.array([[2], [3]])  # frames 2..3 (1-based)
    gt[0, 1] = np.array([[1, 4], [1, 5]])  # frames 1 and 4..5
    scipy.io.savemat(tmp_path / "x.mat", {"gt": gt})
    labels = labels_from_ano_pred_mat(tmp_path / "x.mat", [4, 5])
    assert [y.tolist() for y in labels] == [[0, 1, 1, 0], [1, 0, 0, 1, 1]]


def test_ano_pred_interval_past_the_end_names_the_video(tmp_path):
    gt = np.empty((1, 2), dtype=object)
    gt[0, 0], gt[0, 1] = np.array([[1], [2]]), np.array([[3], [9]])
    scipy.io.savemat(tmp_path / "x.mat", {"gt": gt})
    with pytest.raises(UserError, match=r"test video 2 has interval \[3, 9\] outside its 5 frames"):
        labels_from_ano_pred_mat(tmp_path / "x.mat", [4, 5])


def test_mat_without_gt_and_wrong_video_count(tmp_path):
    scipy.io.savemat(tmp_path / "v.mat", {"volLabel": np.zeros(3)})
    with pytest.raises(UserError, match="no variable 'gt' .*found: volLabel"):
        labels_from_ano_pred_mat(tmp_path / "v.mat", [3])
    gt = np.empty((1, 1), dtype=object)
    gt[0, 0] = np.array([[1], [2]])
    scipy.io.savemat(tmp_path / "g.mat", {"gt": gt})
    with pytest.raises(UserError, match="for 1 test videos but the dataset has 2"):
        labels_from_ano_pred_mat(tmp_path / "g.mat", [3, 3])


@pytest.mark.parametrize("shape", [(1, 9), (9,)])
def test_mnad_concatenated_labels_in_both_shapes(tmp_path, shape):
    flat = np.array([0, 1, 1, 0, 0, 0, 1, 1, 1])
    np.save(tmp_path / "f.npy", flat.reshape(shape))
    labels = labels_from_concatenated_npy(tmp_path / "f.npy", [4, 5])
    assert [y.tolist() for y in labels] == [[0, 1, 1, 0], [0, 0, 1, 1, 1]]
    with pytest.raises(UserError, match="has 9 frame labels but the 2 test videos have 10 frames"):
        labels_from_concatenated_npy(tmp_path / "f.npy", [4, 6])


def test_shanghaitech_mask_folder(tmp_path):
    np.save(tmp_path / "01_0014.npy", np.array([0, 1, 1], np.uint8))
    np.save(tmp_path / "01_0015.npy", np.array([1, 0], np.uint8))
    labels = labels_from_mask_folder(tmp_path, ["01_0014", "01_0015"], [3, 2])
    assert [y.tolist() for y in labels] == [[0, 1, 1], [1, 0]]
    with pytest.raises(UserError, match="01_0015.npy has 2 labels but test video 01_0015 has 3 frames"):
        labels_from_mask_folder(tmp_path, ["01_0014", "01_0015"], [3, 3])


def test_ucsd_m_script(tmp_path):
    (tmp_path / "UCSDped2.m").write_text("TestVideoFile = {};\nTestVideoFile{end+1}.gt_frame = [2:3];\n"
                                          "TestVideoFile{end+1}.gt_frame = [1:1, 4:5];\n")
    labels = labels_from_ucsd_m(tmp_path / "UCSDped2.m", [4, 5])
    assert [y.tolist() for y in labels] == [[0, 1, 1, 0], [1, 0, 0, 1, 1]]


def test_ucsd_gt_masks_with_the_frame_naming_quirk(tmp_path):
    for folder, names, anomalous in (("Test001_gt", ["001", "002", "003"], {1}),
                                     ("Test002_gt", ["frame001", "frame002"], {0})):
        (tmp_path / folder).mkdir()
        for k, name in enumerate(names):
            mask = np.zeros((8, 8), np.uint8)
            if k in anomalous:
                mask[2, 3] = 255
            cv2.imwrite(str(tmp_path / folder / f"{name}.bmp"), mask)
    labels = labels_from_ucsd_gt_masks(tmp_path, [3, 2])
    assert [y.tolist() for y in labels] == [[0, 1, 0], [1, 0]]


def test_label_file_format_dispatch(tmp_path):
    with pytest.raises(UserError, match="unknown label format"):
        load_labels(tmp_path / "labels.txt", ["01"], [3])


# --- bad input ------------------------------------------------------------------------------------------------

def test_missing_data_root_names_the_path(tmp_path):
    cfg = mini_cfg(tmp_path / "nowhere", tmp_path)
    with pytest.raises(UserError, match=r"no frames folder at .*nowhere/mini/training/frames"):
        VideoSet.load(cfg, "training")


def test_dataset_folder_without_videos(tmp_path):
    (tmp_path / "d" / "mini" / "training" / "frames").mkdir(parents=True)
    with pytest.raises(UserError, match="has no video folders"):
        VideoSet.load(mini_cfg(tmp_path / "d", tmp_path), "training")


def test_video_folder_without_frames(tmp_path):
    (tmp_path / "d" / "mini" / "training" / "frames" / "01").mkdir(parents=True)
    with pytest.raises(UserError, match=r"video folder .*01 has no frames"):
        VideoSet.load(mini_cfg(tmp_path / "d", tmp_path), "training")


@pytest.mark.parametrize("content", [b"", b"not a jpeg at all"])
def test_empty_or_corrupt_frame_names_the_file(tiny_dataset, tmp_path, content):
    bad = tiny_dataset / "mini" / "training" / "frames" / "02" / "004.png"
    bad.write_bytes(content)
    with pytest.raises(UserError, match=r"cannot read frame .*02/004.png"):
        VideoSet.load(mini_cfg(tiny_dataset, tmp_path), "training")


def _jpeg_of(frame_rgb: np.ndarray) -> bytes:
    """A JPEG with texture (so a cut removes image data, not padding)."""
    noise = np.random.default_rng(0).integers(0, 60, frame_rgb.shape, dtype=np.uint8)
    return cv2.imencode(".jpg", (frame_rgb // 2 + noise)[..., ::-1])[1].tobytes()


@pytest.mark.parametrize("cut", ["truncated", "zero-filled"])
def test_truncated_jpeg_frame_is_an_error_naming_it_and_earlier_videos_stay_cached(tiny_dataset, tmp_path, cut):
    """libjpeg decodes a cut JPEG with only a nameless warning and a grey bottom: it must be an error instead."""
    video = tiny_dataset / "mini" / "training" / "frames" / "02"
    data = _jpeg_of(np.zeros((16, 24, 3), np.uint8))
    (video / "004.png").unlink()
    scan = data.rfind(b"\xff\xda")
    short = data[:(scan + len(data)) // 2]  # cut halfway through the image data
    (video / "004.jpg").write_bytes(short if cut == "truncated" else short + bytes(len(data) - len(short)))
    assert cv2.imread(str(video / "004.jpg")) is not None  # what OpenCV does: a grey-filled frame, a nameless warning
    cfg = mini_cfg(tiny_dataset, tmp_path)
    with pytest.raises(UserError, match=r"^frame .*02/004\.jpg is truncated \(no JPEG end marker\): re-extract the "
                                        r"video's frames or remove the file$"):
        VideoSet.load(cfg, "training")
    cached = sorted(p.name for p in (tmp_path / "cache" / "mini" / "training").iterdir())
    assert len(cached) == 1 and cached[0].startswith("01_")  # video 01, decoded before, is kept; no part of 02
    (video / "004.jpg").write_bytes(data + b"\x00\x00 trailing bytes")  # complete, with bytes after FF D9: fine
    assert VideoSet.load(cfg, "training").counts == [7, 9]


def test_truncated_png_frame_is_named_as_truncated(tiny_dataset, tmp_path):
    bad = tiny_dataset / "mini" / "training" / "frames" / "02" / "004.png"
    bad.write_bytes(bad.read_bytes()[:-12])  # the IEND chunk is missing
    with pytest.raises(UserError, match=r"frame .*02/004\.png is truncated or damaged \(no PNG end chunk\)"):
        VideoSet.load(mini_cfg(tiny_dataset, tmp_path), "training")


def test_frames_of_two_sizes_in_one_video_are_an_error_naming_the_folder(tiny_dataset, tmp_path):
    video = tiny_dataset / "mini" / "training" / "frames" / "02"
    for name in ("005.png", "007.png"):  # the cache resizes every frame to 16x16: the source sizes are compared
        cv2.imwrite(str(video / name), np.zeros((16, 32, 3), np.uint8))
    with pytest.raises(UserError, match=r"^video folder .*frames/02 has frames of two sizes: 000\.png is 24x16 but "
                                        r"005\.png \(the first of the other size\) is 32x16: re-extract the video's "
                                        r"frames at one size$"):
        VideoSet.load(mini_cfg(tiny_dataset, tmp_path), "training")


def test_symlink_loops_in_the_data_folder(tiny_dataset, tmp_path):
    frames = tiny_dataset / "mini" / "training" / "frames"
    cfg = mini_cfg(tiny_dataset, tmp_path)
    (frames / "01" / "loop").symlink_to(frames / "01")  # a loop inside a video folder: not a frame, ignored
    assert VideoSet.load(cfg, "training").counts == [7, 9]
    (frames / "loop").symlink_to(frames)  # a "video" that is the frames folder itself
    with pytest.raises(UserError, match=r"^video folder .*frames/loop is a symbolic link to .*frames, which holds it "
                                        r"\(a link loop\): remove the link$"):
        VideoSet.load(cfg, "training")
    (frames / "loop").unlink()
    (frames / "02" / "009.png").symlink_to(frames / "02" / "009.png")  # a frame name that links to itself
    with pytest.raises(UserError, match=r"^frame .*02/009\.png is a broken symbolic link .*: fix or remove the link$"):
        VideoSet.load(cfg, "training")


def test_missing_labels_say_where_they_were_looked_for(tiny_dataset, tmp_path):
    with pytest.raises(UserError, match="no labels found for mini .*pass --labels"):
        TestSet.load(mini_cfg(tiny_dataset, tmp_path))


def test_labels_that_disagree_with_the_frames(tiny_dataset, tmp_path):
    np.save(tmp_path / "frame_labels_mini.npy", np.zeros(23))
    with pytest.raises(UserError, match="23 frame labels but the 3 test videos have 24 frames"):
        TestSet.load(mini_cfg(tiny_dataset, tmp_path, labels=str(tmp_path / "frame_labels_mini.npy")))


# --- toy ------------------------------------------------------------------------------------------------------

def test_toy_dataset_is_generated_with_consistent_labels(small_cfg):
    test_set = TestSet.load(small_cfg)
    counts = test_set.videos.counts
    assert len(counts) == 10 and len(VideoSet.load(small_cfg, "training").counts) == 8
    assert [len(y) for y in test_set.labels] == counts
    fraction = np.concatenate(test_set.labels).mean()
    assert 0.2 < fraction < 0.8  # both classes well represented
    assert all(y.max() == 1 for y in test_set.labels)  # every test video has an event


def test_toy_generation_is_deterministic(tmp_path):
    from ffpvad.data.toydata import generate
    generate(tmp_path / "a")
    generate(tmp_path / "b")
    a = sorted((tmp_path / "a").rglob("*.jpg"))
    assert len(a) == 18 * 160
    for path in a[::97]:
        assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes()


# --- the real Ped2 (../shared) --------------------------------------------------------------------------------

def test_real_ped2_counts_and_every_label_source_agree(tmp_path):
    data = shared_path("data")
    cfg = preset("ped2").replace(data_root=str(data), cache_dir=str(tmp_path / "cache"), img_size=32)
    train = list_videos(data / "ped2" / "training" / "frames")
    test_set = TestSet.load(cfg)
    assert (len(train), sum(len(v.frames) for v in train)) == (16, 2550)
    counts = test_set.videos.counts
    assert (len(counts), sum(counts)) == (12, 2010)
    from_mat = labels_from_ano_pred_mat(data / "labels" / "ped2.mat", counts)
    from_npy = labels_from_concatenated_npy(data / "labels" / "frame_labels_ped2.npy", counts)
    from_m = labels_from_ucsd_m(data / "labels" / "UCSDped2.m", counts)
    with tarfile.open(shared_path("data", "ucsd_official_sample.tar.gz")) as archive:
        archive.extractall(tmp_path, filter="data")
    from_masks = labels_from_ucsd_gt_masks(tmp_path / "UCSD_Anomaly_Dataset.v1p2" / "UCSDped2" / "Test", counts)
    reference = np.concatenate(from_mat)
    assert reference.sum() == 1648
    assert [int(y.sum()) for y in from_mat] == [120, 86, 146, 150, 129, 159, 135, 180, 120, 150, 180, 93]
    for other in (from_npy, from_m, from_masks, test_set.labels):
        assert np.array_equal(np.concatenate(other), reference)
