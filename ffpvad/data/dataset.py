"""Datasets in the prepared-frames layout, a frame cache, training/test clips and frame labels.

Layout (docs/data.md 'Prepared-frames layout')::

    <data_root>/<dataset>/training/frames/<video>/<frame>.jpg
    <data_root>/<dataset>/testing/frames/<video>/<frame>.jpg

Frames are decoded and resized once into a uint8 array per video (``<cache_dir>/<dataset>/<split>/*.npy``) and then
memory-mapped: decoding JPEGs on every step would dominate a CPU training step.  Frames are RGB; grey datasets
(Ped1/Ped2 store R=G=B) keep the 3-channel layout the published models expect.  Networks see [-1, 1].

Frame labels (:class:`TestSet`) are found and read by ``ffpvad/data/labels.py``, the one module for every label and mask format
(ano_pred ``.mat``, MNAD ``frame_labels_<ds>.npy``, ShanghaiTech ``test_frame_mask/``, UCSD ``.m``); each reader
checks the lengths against the frame counts and names the video that disagrees.
"""
from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
import torch
from tqdm import tqdm

from ffpvad.config import Config
from ffpvad.errors import UserError
from ffpvad.data.frames import FRAME_EXTENSIONS, PREPARED_MANIFEST, check_contiguous, frame_numbers, natural_key
from ffpvad.ioutil import atomic_path, ensure_writable_dir
from ffpvad.data.labels import find_label_source, load_labels, save_npy
from ffpvad.data.toydata import ensure_toy_dataset
from ffpvad.data.video_io import frame_files, frame_size_error, read_image

SPLITS = ("training", "testing")
CACHE_FIX = "choose a writable --cache_dir (the decoded frames are kept there)"


# --- layout ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Video:
    name: str
    frames: tuple[Path, ...]


def frames_dir(cfg: Config, split: str) -> Path:
    return Path(cfg.data_root) / cfg.dataset / split / "frames"


VIDEO_FILE_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv", ".flv")


def list_videos(root: Path) -> list[Video]:
    """Video folders under ``root`` in name order, each with its frames in order. Bad layouts are UserErrors.

    A video folder that is a symbolic link back to ``root`` or a folder above it (a link loop) is an error naming
    the link; a frame name that is a broken link or a link loop is an error naming it (video_io.frame_files).  The
    frame names are checked against the prepared layout's numbering (:func:`check_frame_numbering`), so a missing or
    doubled frame is refused instead of shifting every label after it.
    """
    if not root.is_dir():
        raise UserError(f"no frames folder at {root}: expected <data_root>/<dataset>/<split>/frames/<video>/"
                        f"<frame>.jpg (set --data_root, or prepare the dataset first; see docs/data.md "
                        f"'Preparing a dataset')")
    videos = []
    real_root = root.resolve()
    for entry in sorted((p for p in root.iterdir() if not p.name.startswith(".")), key=natural_key):
        if not entry.is_dir():
            _refuse_loose_file(entry)
            continue
        if entry.is_symlink() and real_root.is_relative_to(entry.resolve()):
            raise UserError(f"video folder {entry} is a symbolic link to {entry.resolve()}, which holds it (a link "
                            f"loop): remove the link")
        frames = tuple(frame_files(entry))
        if not frames:
            raise UserError(f"video folder {entry} has no frames ({', '.join(FRAME_EXTENSIONS)}): "
                            f"remove it or re-extract the video")
        videos.append(Video(entry.name, frames))
    if not videos:
        raise UserError(f"{root} has no video folders: expected one folder of frames per video")
    check_frame_numbering(root, videos)
    return videos


def _refuse_loose_file(path: Path) -> None:
    """A video file or an image directly in ``frames/``, or a video folder that is a broken link, would be silently
    left out of the dataset: refuse it (other files, notes or checksums, are not frames and are ignored)."""
    if path.is_symlink() and not path.exists():
        raise UserError(f"video folder {path} is a broken symbolic link (its target is missing, or the link points "
                        f"back to itself): fix or remove the link")
    suffix = path.suffix.lower()
    if suffix in VIDEO_FILE_EXTENSIONS:
        raise UserError(f"{path} is a video file, but the frames folder holds one folder of frames per video: "
                        f"prepare it with tools/prepare_data.py (docs/data.md 'Custom footage'), or move it away")
    if suffix in FRAME_EXTENSIONS:
        raise UserError(f"{path} is an image directly in the frames folder, outside any video folder: move it into "
                        f"its video's folder, or away")


def _manifest_frames(folder: Path) -> int | None:
    """The frame count tools/prepare_data.py recorded for a video it wrote (None: no readable manifest)."""
    try:
        frames = json.loads((folder / PREPARED_MANIFEST).read_text()).get("frames")
    except (OSError, ValueError, AttributeError):
        return None
    return frames if isinstance(frames, int) else None


def check_frame_numbering(root: Path, videos: Sequence[Video]) -> None:
    """Every video's frames are numbered without a gap or a duplicate (names only: cheap enough for every run).

    The prepared layout is 0-based (frames.frame_file_name).  A video with tools/prepare_data.py's manifest must
    start at 0 and hold the number of frames it records (which catches frames missing at the end, too); without one,
    a split of 1-based videos (e.g. ffmpeg's ``%03d.jpg``) is accepted as long as every video starts at the same
    number, so a video of a 0-based split that starts at 1 is missing its first frame.
    """
    numbered = [(v, frame_numbers(root / v.name, v.frames), _manifest_frames(root / v.name)) for v in videos]
    first = 0 if any(min(n) == 0 or m is not None for _, n, m in numbered) else 1
    for video, numbers, recorded in numbered:
        folder = root / video.name
        check_contiguous(folder, video.frames, numbers, 0 if recorded is not None else first)
        if recorded is not None and recorded != len(video.frames):
            change = "lost frames at its end" if recorded > len(video.frames) else "gained frames"
            raise UserError(f"video {folder} has {len(video.frames)} frames but tools/prepare_data.py wrote "
                            f"{recorded} (its {PREPARED_MANIFEST}): it {change} since; re-run tools/prepare_data.py "
                            f"for this dataset (it redoes the video), or remove the video folder")


# --- frame cache ----------------------------------------------------------------------------------------------

def _to_rgb_square(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[:2] != (size, size):
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(image[:, :, ::-1])


def decode_frame(path: Path, size: int) -> np.ndarray:
    """One frame as RGB uint8 (size, size, 3); grey images are expanded to three equal channels.

    A file that is unreadable, not an image, or a truncated JPEG/PNG is a UserError naming it (video_io.read_image).
    """
    return _to_rgb_square(read_image(path), size)


def _video_fingerprint(video: Video, size: int) -> str:
    digest = hashlib.sha1(f"{size}".encode())
    for frame in video.frames:
        try:
            stat = frame.stat()
        except OSError as exc:
            raise UserError(f"cannot read frame {frame} ({exc.strerror or exc}): it changed while the dataset was "
                            f"read; run again") from None
        digest.update(f"{frame.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:12]


def _decode_video(video: Video, size: int, pool: ThreadPoolExecutor) -> np.ndarray:
    """The video's frames resized to (T, size, size, 3); frames of different source sizes are a UserError."""

    def decode(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
        image = read_image(path)
        return image.shape[:2], _to_rgb_square(image, size)

    decoded = list(pool.map(decode, video.frames))
    first_shape = decoded[0][0]
    for path, (shape, _) in zip(video.frames, decoded):
        if shape != first_shape:
            raise frame_size_error(video.frames[0].parent, video.frames[0], first_shape, path, shape)
    return np.stack([frame for _, frame in decoded])


def cached_frames(videos: Sequence[Video], size: int, cache_root: Path, desc: str = "") -> list[np.ndarray]:
    """Memory-mapped uint8 (T, size, size, 3) arrays, one per video, decoding only what is not cached yet.

    A cache file is named by a fingerprint of the source frames (path, size, mtime), so an edited video is decoded
    again.  Writes are atomic: an interrupted build leaves no file that looks complete.
    """
    paths = [cache_root / f"{v.name}_{size}px_{_video_fingerprint(v, size)}.npy" for v in videos]
    missing = [i for i, p in enumerate(paths) if not p.exists()]
    if missing:
        # Proved writable before the first frame is decoded, with one line naming --cache_dir.  Not a fallback to
        # running without the cache: that means holding every decoded frame in memory (ShanghaiTech at 256 px is
        # about 54 GB) or decoding JPEGs at every step (what the cache exists to avoid), so a permissions slip
        # would become an out-of-memory crash or a many times slower run.  A complete cache on a read-only mount is
        # still used: nothing needs writing then.
        ensure_writable_dir(cache_root, "frame cache --cache_dir", CACHE_FIX)
        with ThreadPoolExecutor(max_workers=2) as pool:  # cv2 releases the GIL while decoding
            for i in tqdm(missing, desc=f"decoding {desc}".strip(), unit="video", leave=False):
                array = _decode_video(videos[i], size, pool)
                with atomic_path(paths[i], suffix=".npy", fix=CACHE_FIX, what="frame cache") as tmp:
                    with open(tmp, "wb") as handle:
                        save_npy(handle, array)  # np.save's failure on a full disk has no errno to word
    arrays = []
    for video, path in zip(videos, paths):
        try:
            arrays.append(np.load(path, mmap_mode="r"))
        except (ValueError, OSError) as exc:
            raise UserError(f"frame cache {path} is unreadable ({exc}): delete it and run again") from None
        if arrays[-1].shape[0] != len(video.frames):
            raise UserError(f"frame cache {path} holds {arrays[-1].shape[0]} frames but {video.name} has "
                            f"{len(video.frames)}: delete it and run again")
    return arrays


@dataclass
class VideoSet:
    """The frames of one split: video names, memory-mapped frame arrays, frame counts."""
    names: list[str]
    frames: list[np.ndarray]

    @property
    def counts(self) -> list[int]:
        return [len(f) for f in self.frames]

    @classmethod
    def load(cls, cfg: Config, split: str, max_videos: int = 0) -> "VideoSet":
        """The split's videos, or with ``max_videos`` > 0 at most that many spread evenly over it (only those are
        decoded)."""
        if cfg.dataset == "toy":
            ensure_toy_dataset(Path(cfg.data_root))
        videos = list_videos(frames_dir(cfg, split))
        if 0 < max_videos < len(videos):
            videos = [videos[i] for i in evenly_spaced(len(videos), max_videos)]
        cache = Path(cfg.cache_dir) / cfg.dataset / split
        return cls([v.name for v in videos], cached_frames(videos, cfg.img_size, cache, f"{cfg.dataset} {split}"))


def evenly_spaced(n: int, k: int) -> np.ndarray:
    """Up to ``k`` distinct indices spread evenly over range(n), first and last included."""
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


def to_model_range(frames_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float (..., 3, H, W) in [-1, 1]."""
    return frames_uint8.movedim(-1, -3).float().div_(127.5).sub_(1.0)


# --- training clips -------------------------------------------------------------------------------------------

class TrainClips:
    """Every run of ``clip_len`` consecutive frames inside one training video."""

    def __init__(self, videos: VideoSet, clip_len: int):
        self.videos = videos
        self.clip_len = clip_len
        starts = [(v, s) for v, n in enumerate(videos.counts) for s in range(n - clip_len + 1)]
        if not starts:
            raise UserError(f"no training video has {clip_len} frames: lower --clip_len or add longer videos")
        self.index = np.asarray(starts, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def batch(self, clip_ids: Sequence[int]) -> torch.Tensor:
        """uint8 (B, clip_len, H, W, 3)."""
        clips = [self.videos.frames[v][s:s + self.clip_len] for v, s in self.index[np.asarray(clip_ids)]]
        return torch.from_numpy(np.stack(clips))

    def strided_batch(self, clip_ids: Sequence[int], stride: int) -> torch.Tensor:
        """uint8 (B, clip_len, H, W, 3): every ``stride``-th frame of each clip's video from the clip's first frame
        (moved back where the video ends too soon; the pseudo-anomalies of ffpvad/data/pseudo.py)."""
        clips = []
        for v, s in self.index[np.asarray(clip_ids)]:
            video = self.videos.frames[v]
            first = strided_window_start(int(s), len(video), self.clip_len, stride)
            clips.append(video[first:first + stride * (self.clip_len - 1) + 1:stride])
        return torch.from_numpy(np.stack(clips))


def strided_window_start(start: int, n_frames: int, clip_len: int, stride: int) -> int:
    """First frame of a window of ``clip_len`` frames at ``stride`` that starts at ``start``, moved back to end
    inside the video; -1 when the video is too short for any."""
    span = stride * (clip_len - 1)
    return min(start, n_frames - 1 - span) if n_frames > span else -1


class ClipSampler:
    """Shuffled passes over the clips, reproducible from (seed, epoch) alone.

    The state is just (epoch, position), so a checkpoint restores the exact next batch.  An incomplete last batch
    of an epoch is dropped (every batch has ``batch_size`` clips).
    """

    def __init__(self, n_clips: int, batch_size: int, seed: int):
        if n_clips < batch_size:
            raise UserError(f"only {n_clips} training clips for --batch_size={batch_size}: lower the batch size")
        self.n_clips, self.batch_size, self.seed = n_clips, batch_size, seed
        self.epoch, self.position = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n_clips)

    def next_batch(self) -> np.ndarray:
        if self.position + self.batch_size > self.n_clips:
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        ids = self._order[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return ids

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "n_clips": self.n_clips}

    def load_state_dict(self, state: dict) -> None:
        if state["n_clips"] != self.n_clips:
            raise UserError(f"the checkpoint was trained on {state['n_clips']} clips but the data now has "
                            f"{self.n_clips}: resume on the same training set")
        self.seed, self.epoch, self.position = state["seed"], state["epoch"], state["position"]
        self._order = self._permutation(self.epoch)


# --- test clips -----------------------------------------------------------------------------------------------

def iter_test_batches(videos: VideoSet, clip_len: int, batch_size: int,
                      video_ids: Sequence[int] | None = None) -> Iterator[tuple[int, np.ndarray, torch.Tensor]]:
    """(video index, target frame indices, uint8 clips (B, clip_len, H, W, 3)) covering every predictable frame.

    Target t is predicted from frames t-clip_len+1 .. t-1; the first clip_len-1 frames of a video have no target.
    """
    for v in (range(len(videos.names)) if video_ids is None else video_ids):
        frames = videos.frames[v]
        targets = np.arange(clip_len - 1, len(frames))
        for lo in range(0, len(targets), batch_size):
            chunk = targets[lo:lo + batch_size]
            clips = np.stack([frames[t - clip_len + 1:t + 1] for t in chunk])
            yield v, chunk, torch.from_numpy(clips)


def n_predicted_frames(videos: VideoSet, clip_len: int) -> int:
    return sum(max(0, n - clip_len + 1) for n in videos.counts)


# --- test set: frames and labels (ffpvad/data/labels.py reads the label formats) ------------------------------------------

@dataclass
class TestSet:
    __test__ = False  # not a pytest test class
    videos: VideoSet
    labels: list[np.ndarray]
    label_source: Path

    @classmethod
    def load(cls, cfg: Config) -> "TestSet":
        videos = VideoSet.load(cfg, "testing")
        source = find_label_source(cfg)
        return cls(videos, load_labels(source, videos.names, videos.counts), source)
