"""Prepare the official benchmark downloads (and a user's own videos) into the prepared-frames layout, offline.

``tools/prepare_data.py`` is the command line; this module holds the reusable pieces.  Nothing here downloads:
the user brings the files (a folder, or a .tar/.tar.gz/.tgz/.zip archive, which is extracted to a hidden staging
folder under the data root and removed afterwards; the source itself is never modified).

What is read (../shared/DATASETS.md section 5 has the official layouts)::

    ped1, ped2  UCSD_Anomaly_Dataset.v1p2/UCSDpedN/Train/Train0NN/NNN.tif, Test/Test0NN/NNN.tif (1-based),
                Test/UCSDpedN.m (frame intervals), Test/Test0NN_gt/NNN.bmp or frameNNN.bmp (pixel masks;
                all 12 Ped2 videos, 10 of Ped1's 36)
    avenue      Avenue Dataset/{training,testing}_videos/NN.avi and ground_truth_demo/testing_label_mask/
                <n>_label.mat (``volLabel``, a 1 x T cell of 360x640 masks; a separate download)
    shanghai    training/videos/NN_NNN.avi, testing/frames/NN_NNNN/NNN.jpg, testing/test_frame_mask/*.npy,
                testing/test_pixel_mask/*.npy
    custom      <src>/{training,train}/ and <src>/{testing,test}/: video files OpenCV reads (or folders of frames),
                optional labels.csv / labels.txt (see :func:`read_interval_file`)

What is written (what dataset.py reads)::

    <data_root>/<dataset>/{training,testing}/frames/<video>/000.jpg ...   0-based, contiguous
    <data_root>/<dataset>/<dataset>.mat                                   ano_pred labels (not shanghai)
    <data_root>/shanghai/testing/test_frame_mask/<video>.npy               ShanghaiTech's own label format
    <data_root>/<dataset>/testing/pixel_masks/<video>.npy                  uint8 (T, H, W) in {0, 1}

Choices.  Frames are JPEG at quality 95 by default (``png`` on request): the layout of the public ``ped2.tar.gz``
that the FFP/MNAD ports use (3-channel JPEG, R=G=B for the grey UCSD sets, 0-based ``000.jpg``; Avenue ``0000.jpg``).
Video names: UCSD ``Train001``/``Test001`` become ``01``, Avenue ``01.avi`` ``01``, ShanghaiTech and custom keep
their names.  ShanghaiTech's test JPEGs are hard-linked (or copied) unchanged, not re-encoded.  Labels: UCSD frame
labels come from the ``.m`` file and, when both exist, are compared with the ``_gt`` masks (any non-zero pixel);
Avenue frame labels come from the ``volLabel`` masks (3,712 anomalous frames) unless an ano_pred ``avenue.mat``
(3,867, the convention of published FFP/MNAD numbers) is given with ``labels=``.

Robustness.  Every video is written into ``.partial-<video>`` beside its final folder and renamed into place when
complete, with a ``.prepared.json`` manifest (source size, frame count, format) inside, so a crash never leaves a
half video that looks complete; a rerun skips finished videos, redoes unfinished or changed ones, and checks every
frame count (against the masks, the file listing or the container's header) so a short or unreadable video is named,
never silently truncated.  Bad inputs are :class:`errors.UserError` with one line naming the file.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import sys
import tarfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np

from dataset import (FRAME_EXTENSIONS, _natural_key, labels_from_ucsd_m, list_videos, load_labels)
from errors import UserError
from ioutil import atomic_path

DATASETS = ("ped1", "ped2", "avenue", "shanghai", "custom")
ALIASES = {"shanghaitech": "shanghai"}
SPLITS = ("training", "testing")
PIXEL_MASKS = "pixel_masks"  # <data_root>/<dataset>/testing/pixel_masks/<video>.npy, uint8 (T, H, W) in {0, 1}
MANIFEST = ".prepared.json"
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")
NOT_VIDEOS = (".txt", ".csv", ".md", ".json", ".npy", ".mat", ".m", ".py", ".pdf", ".html", ".xml", ".ini")
FRAME_DIGITS = {"avenue": 4}  # zero padding of frame names (ano_pred's avenue uses 0000.jpg); default 3
_IGNORED = (".DS_Store", "Thumbs.db", "desktop.ini")
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: atomic writes go through mkstemp (0600); prepared files get the usual 0644

# Published sizes (DATASETS.md section 2): (videos, frames) per split and anomalous test frames per label source.
PUBLISHED: dict[str, dict] = {
    "ped2": {"training": (16, 2550), "testing": (12, 2010), "anomalous": {"": 1648}},
    "ped1": {"training": (34, 6800), "testing": (36, 7200), "anomalous": {"": 4045}},
    "avenue": {"training": (16, 15328), "testing": (21, 15324),
               "anomalous": {"masks": 3712, "": 3867}},  # volLabel masks; ano_pred avenue.mat / MNAD npy
    "shanghai": {"training": (330, 274515), "testing": (107, 40791), "anomalous": {"": 17326}},
}


# --- small file helpers ---------------------------------------------------------------------------------------

def _visible(path: Path) -> bool:
    """False for macOS ``._*`` resource forks, ``.DS_Store`` and other hidden or system files."""
    return not path.name.startswith(".") and path.name not in _IGNORED


def _frame_number(path: Path) -> int | None:
    """The number in ``001.bmp`` / ``frame001.bmp`` / ``001.tif`` (UCSD's two naming styles), else None."""
    match = re.fullmatch(r"(?:frame)?_?(\d+)", path.stem, flags=re.IGNORECASE)
    return int(match.group(1)) if match else None


def numbered_files(folder: Path, extensions: Sequence[str]) -> list[Path]:
    """The files ``1..T`` (or ``0..T-1``) of ``folder`` in numeric order; a gap or a foreign name is a UserError."""
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder: expected numbered frame files ({', '.join(extensions)})")
    files = [p for p in folder.iterdir() if p.is_file() and _visible(p) and p.suffix.lower() in extensions]
    if not files:
        raise UserError(f"{folder} has no {'/'.join(extensions)} files: expected numbered frames such as "
                        f"001{extensions[0]}")
    numbered = []
    for path in files:
        number = _frame_number(path)
        if number is None:
            raise UserError(f"{path}: unexpected file name, expected a frame number such as 001{path.suffix} or "
                            f"frame001{path.suffix}")
        numbered.append((number, path))
    numbered.sort()
    numbers = [n for n, _ in numbered]
    first = numbers[0]
    if first not in (0, 1) or numbers != list(range(first, first + len(numbers))):
        missing = sorted(set(range(first, numbers[-1] + 1)) - set(numbers))[:5]
        detail = f"missing {missing}" if missing else f"duplicate numbers or a start at {first}"
        raise UserError(f"{folder}: frame numbers are not contiguous from 0 or 1 ({detail}): the folder is "
                        f"incomplete or holds files from two videos")
    return [p for _, p in numbered]


def _image_files(folder: Path) -> list[Path]:
    """A user's frame folder: every image in natural name order (any names)."""
    files = sorted((p for p in folder.iterdir() if p.is_file() and _visible(p)
                    and p.suffix.lower() in FRAME_EXTENSIONS), key=_natural_key)
    if not files:
        raise UserError(f"{folder} has no frames ({', '.join(FRAME_EXTENSIONS)}): expected one image per frame")
    return files


def _subdirs(folder: Path, pattern: str) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and _visible(p) and re.fullmatch(pattern, p.name)),
                  key=_natural_key) if folder.is_dir() else []


def free_bytes(path: Path) -> int:
    """Free space of the file system holding ``path`` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def _human(n_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n_bytes < 1000 or unit == "TB":
            return f"{n_bytes:.1f} {unit}" if unit != "B" else f"{int(n_bytes)} B"
        n_bytes /= 1000
    return ""


# --- pixel masks: readers and the prepared layout --------------------------------------------------------------

def read_ucsd_gt_mask_folder(folder: Path) -> np.ndarray:
    """Official UCSD pixel masks ``Test0NN_gt/*.bmp`` as bool (T, H, W), in frame order.

    Handles the release's naming quirk (``Test006_gt``, ``Test009_gt`` and ``Test012_gt`` of Ped2 name their masks
    ``frame001.bmp`` ..., the others ``001.bmp`` ...) and skips ``._*`` / ``.DS_Store`` files.  The masks are 8-bit
    {0, 255}; a pixel is anomalous when non-zero.
    """
    folder = Path(folder)
    masks = []
    for path in numbered_files(folder, (".bmp", ".png", ".tif", ".tiff")):
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise UserError(f"cannot read mask {path}: the file is empty or not an image")
        if masks and mask.shape != masks[0].shape:
            raise UserError(f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but the folder's first mask is "
                            f"{masks[0].shape[1]}x{masks[0].shape[0]}")
        masks.append(mask > 0)
    return np.stack(masks)


def read_avenue_label_mat(path: Path) -> list[np.ndarray]:
    """Official Avenue ``<n>_label.mat``: the ``volLabel`` 1 x T cell of (H, W) masks, as a list of T arrays."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:  # scipy raises several types for a corrupt file
        raise UserError(f"cannot read {path} as MATLAB .mat ({exc}): expected the official Avenue "
                        f"testing_label_mask file") from None
    if "volLabel" not in mat:
        keys = ", ".join(k for k in mat if not k.startswith("__")) or "nothing"
        raise UserError(f"{path} has no variable 'volLabel' (found: {keys}): expected the official Avenue "
                        f"ground_truth_demo/testing_label_mask/<n>_label.mat")
    frames = [np.asarray(m) for m in np.asarray(mat["volLabel"], dtype=object).reshape(-1)]
    if not frames or any(f.ndim != 2 for f in frames):
        raise UserError(f"{path}: 'volLabel' is not a cell of 2-D masks: expected the official Avenue format")
    return frames


def avenue_mask_length(path: Path) -> int:
    """Frames in an Avenue ``volLabel`` file, read from the .mat header only (no decompression)."""
    import scipy.io

    try:
        variables = {name: shape for name, shape, _ in scipy.io.whosmat(str(path))}
    except Exception as exc:
        raise UserError(f"cannot read {path} as MATLAB .mat ({exc}): expected the official Avenue "
                        f"testing_label_mask file") from None
    if "volLabel" not in variables:
        raise UserError(f"{path} has no variable 'volLabel' (found: {', '.join(variables) or 'nothing'}): "
                        f"expected the official Avenue ground_truth_demo/testing_label_mask/<n>_label.mat")
    return int(np.prod(variables["volLabel"]))


def read_npy_masks(path: Path) -> np.ndarray:
    """ShanghaiTech ``test_pixel_mask/<video>.npy``: (T, H, W), memory-mapped."""
    try:
        masks = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise UserError(f"cannot read pixel mask {path} as .npy ({exc})") from None
    if masks.ndim != 3:
        raise UserError(f"pixel mask {path} has shape {masks.shape}, expected (frames, height, width)")
    return masks


def pixel_mask_path(data_root: Path, dataset: str, video: str) -> Path:
    return Path(data_root) / dataset / "testing" / PIXEL_MASKS / f"{video}.npy"


def load_pixel_masks(data_root: Path, dataset: str, names: Sequence[str],
                     counts: Sequence[int] | None = None, mmap: bool = True) -> list[np.ndarray]:
    """The prepared pixel masks of the test videos ``names``: uint8 (T, H, W) arrays with values {0, 1}.

    Reads ``<data_root>/<dataset>/testing/pixel_masks/<video>.npy`` (written by ``tools/prepare_data.py``).  With
    ``mmap`` (default) the arrays are read-only memory maps: Avenue's masks are 3.5 GB in memory, ShanghaiTech's
    16 GB.  ``counts`` (frames per video), when given, is checked against each mask's length.  A missing or
    malformed file is a UserError naming it.
    """
    if counts is not None and len(counts) != len(names):
        raise ValueError("names and counts differ in length")
    folder = Path(data_root) / dataset / "testing" / PIXEL_MASKS
    if not folder.is_dir():
        raise UserError(f"no pixel masks for {dataset} at {folder}: prepare them with "
                        f"'python tools/prepare_data.py {dataset} --src <download> --data_root {data_root}' "
                        f"(pixel masks exist for ped1, ped2, avenue and shanghai)")
    masks = []
    for k, name in enumerate(names):
        path = pixel_mask_path(data_root, dataset, name)
        if not path.exists():
            raise UserError(f"no pixel mask {path} for test video {name}: the prepared masks do not match the "
                            f"test videos (Ped1 has pixel masks for only 10 of its 36 test videos)")
        try:
            mask = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise UserError(f"cannot read pixel mask {path} ({exc}): prepare the dataset again") from None
        if mask.ndim != 3 or mask.dtype != np.uint8:
            raise UserError(f"pixel mask {path} is {mask.dtype} {mask.shape}, expected uint8 (frames, height, "
                            f"width): prepare the dataset again")
        if counts is not None and mask.shape[0] != counts[k]:
            raise UserError(f"pixel mask {path} has {mask.shape[0]} frames but test video {name} has {counts[k]}")
        masks.append(mask)
    return masks


def frame_labels_from_masks(masks: np.ndarray) -> np.ndarray:
    """0/1 per frame: 1 when the frame's mask has any non-zero pixel (read in chunks, fine on memory maps)."""
    out = np.zeros(len(masks), dtype=np.int64)
    for lo in range(0, len(masks), 64):
        chunk = np.asarray(masks[lo:lo + 64])
        out[lo:lo + len(chunk)] = chunk.reshape(len(chunk), -1).any(axis=1)
    return out


# --- labels: intervals, user files, ano_pred output ------------------------------------------------------------

def intervals_of(labels: np.ndarray) -> np.ndarray:
    """0/1 frame labels -> (2, m) 1-based inclusive [start; end] intervals of the anomalous runs (ano_pred)."""
    padded = np.concatenate([[0], np.asarray(labels, dtype=np.int8) != 0, [0]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return np.stack([edges[0::2] + 1, edges[1::2]]).astype(np.int32).reshape(2, -1)


def _readable(path: Path) -> None:
    os.chmod(path, 0o666 & ~_UMASK)


def write_ano_pred_mat(path: Path, labels: Sequence[np.ndarray]) -> None:
    """The ano_pred ``gt`` format (dataset.labels_from_ano_pred_mat): a 1 x n cell of (2, m) intervals."""
    import scipy.io

    cells = np.empty((1, len(labels)), dtype=object)
    for k, video in enumerate(labels):
        cells[0, k] = intervals_of(video)
    with atomic_path(path, suffix=".mat") as tmp:
        with open(tmp, "wb") as handle:  # a file object: savemat would append .mat to a path
            scipy.io.savemat(handle, {"gt": cells})
        _readable(tmp)


def write_frame_mask_folder(folder: Path, names: Sequence[str], labels: Sequence[np.ndarray]) -> None:
    """ShanghaiTech ``test_frame_mask/<video>.npy``: one 1-D uint8 0/1 array per test video."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, video in zip(names, labels):
        with atomic_path(folder / f"{name}.npy", suffix=".npy") as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, np.asarray(video, dtype=np.uint8))
            _readable(tmp)


def read_interval_file(path: Path) -> dict[str, list[tuple[int, int]]]:
    """A user's anomalous intervals: one ``video, first frame, last frame`` per line.

    Frame numbers are 0-based (the first frame is 0, prepared as ``000.jpg``) and both ends are included.  Fields
    are separated by commas or white space; ``#`` starts a comment; blank lines and a header line are skipped; a
    video may have several lines.  The video is the file (or folder) name, with or without its extension.
    """
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise UserError(f"cannot read label file {path} ({exc})") from None
    intervals: dict[str, list[tuple[int, int]]] = {}
    first_content = True
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = [f.strip() for f in (next(csv.reader([line])) if "," in line else line.split())]
        try:
            video, start, end = fields[0], int(fields[1]), int(fields[2])
            if len(fields) != 3:
                raise ValueError
        except (ValueError, IndexError):
            if first_content:  # a header such as "video,start,end"
                first_content = False
                continue
            raise UserError(f"{path}:{lineno}: expected 'video, first frame, last frame' (0-based frame numbers), "
                            f"got {raw.strip()!r}") from None
        first_content = False
        if not 0 <= start <= end:
            raise UserError(f"{path}:{lineno}: interval {start}..{end} is not valid: expected 0 <= first <= last")
        intervals.setdefault(video, []).append((start, end))
    return intervals


def labels_from_intervals(path: Path, intervals: dict[str, list[tuple[int, int]]], names: Sequence[str],
                          counts: Sequence[int]) -> list[np.ndarray]:
    """Per-video 0/1 labels from :func:`read_interval_file`; test videos not listed are all normal."""
    index = {name: k for k, name in enumerate(names)}
    labels = [np.zeros(n, dtype=np.int64) for n in counts]
    for video, spans in intervals.items():
        k = index.get(video, index.get(Path(video).stem))
        if k is None:
            raise UserError(f"{path}: '{video}' is not a test video (test videos: {', '.join(names)})")
        for start, end in spans:
            if end >= counts[k]:
                raise UserError(f"{path}: interval {start}..{end} of '{video}' goes past its last frame "
                                f"{counts[k] - 1} (frame numbers are 0-based)")
            labels[k][start:end + 1] = 1
    return labels


def read_label_file(path: Path, names: Sequence[str], counts: Sequence[int]) -> list[np.ndarray]:
    """Any label file a user may give: interval text/CSV, or what dataset.load_labels reads (.mat, .npy, .m)."""
    if not path.exists():
        raise UserError(f"label file {path} does not exist")
    if path.suffix.lower() in (".csv", ".txt"):
        return labels_from_intervals(path, read_interval_file(path), names, counts)
    return load_labels(path, names, counts)


# --- the plan: what to prepare ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class VideoJob:
    """One video to write into ``<split>/frames/<name>/``."""
    split: str
    name: str
    source: Path  # a video file or a folder of frames
    frames: tuple[Path, ...] | None = None  # the frame files in order (folder sources); None = decode ``source``
    expected: int | None = None  # frames it must have (masks, listing); None = at least the header's count
    header: int = 0  # the video container's frame count (0 = unknown)
    frame_size: tuple[int, int] | None = None  # (height, width) when known before extraction
    link: bool = False  # frames are already in the output format: link or copy them unchanged


@dataclass(frozen=True)
class MaskJob:
    """One test video's pixel masks to write as ``pixel_masks/<name>.npy``."""
    name: str
    source: Path
    frames: int  # its length, known before reading (listing or header)
    load: Callable[[], Sequence[np.ndarray]]  # the (H, W) masks in frame order
    frame_size: tuple[int, int] | None = None  # the video's (height, width), checked against the masks
    size_hint: tuple[int, int] = (480, 856)  # the masks' (height, width) as far as known before reading them
    linkable: bool = False  # the source is already a uint8 .npy: linked or copied as it is when it holds 0/1


@dataclass(frozen=True)
class LabelSource:
    """Frame labels from one source: ``load(names, counts)`` -> {video: 0/1 labels} (possibly partial)."""
    description: str
    load: Callable[[Sequence[str], Sequence[int]], dict[str, np.ndarray]]
    convention: str = ""  # key into PUBLISHED[...]["anomalous"]


@dataclass
class Plan:
    dataset: str
    videos: list[VideoJob] = field(default_factory=list)
    masks: list[MaskJob] = field(default_factory=list)
    label_sources: list[LabelSource] = field(default_factory=list)  # the first is used, the others compared
    test_counts: dict[str, int] = field(default_factory=dict)  # test video -> frames known from the source
    label_format: str = "mat"  # mat: <ds>/<ds>.mat; frame_mask: <ds>/testing/test_frame_mask/
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Options:
    data_root: Path
    image_format: str = "jpg"  # jpg | png
    jpeg_quality: int = 95
    link: str = "auto"  # auto (hard link, else copy) | copy | hardlink | symlink: ShanghaiTech's test JPEGs
    workers: int = 2
    labels: Path | None = None  # a label file that replaces the dataset's own frame labels
    labels_only: bool = False  # labels and pixel masks only; frames are not written
    keep_extracted: bool = False  # keep the staging folder of an archive source
    progress: bool = True


def _visible_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file() and _visible(p)] if folder.is_dir() else []


def find_dir(roots: Sequence[Path], accept: Callable[[Path], bool], what: str, depth: int = 4,
             required: bool = True, exclude: Path | None = None) -> Path | None:
    """The first folder (breadth first, ``depth`` levels, hidden folders skipped) under ``roots`` that ``accept``s;
    ``exclude`` (the output data root, when it lies inside a source) is never searched."""
    skip = Path(exclude).resolve() if exclude is not None else None
    level = [Path(r) for r in roots]
    for _ in range(depth + 1):
        for folder in level:
            if folder.is_dir() and accept(folder):
                return folder
        level = [c for f in level if f.is_dir() for c in sorted(f.iterdir(), key=_natural_key)
                 if c.is_dir() and _visible(c) and c.resolve() != skip]
    if required:
        raise UserError(f"no {what} under {', '.join(str(r) for r in roots)}: is --src the official download?")
    return None


def open_video(path: Path) -> tuple[int, tuple[int, int]]:
    """(header frame count, (height, width)) of a video OpenCV can open; a UserError naming it otherwise."""
    capture = cv2.VideoCapture(str(path))
    try:
        ok, frame = capture.read() if capture.isOpened() else (False, None)
        if not ok or frame is None:
            raise UserError(f"cannot read video {path} with OpenCV: the file is damaged, not a video, or uses a "
                            f"codec this OpenCV build lacks (convert it, e.g. 'ffmpeg -i in out.mp4', or remove it)")
        return max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT))), frame.shape[:2]
    finally:
        capture.release()


def _image_size(path: Path) -> tuple[int, int]:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise UserError(f"cannot read frame {path}: the file is empty or not an image")
    return image.shape[:2]


def _video_job(split: str, name: str, path: Path, expected: int | None = None) -> VideoJob:
    header, size = open_video(path)
    return VideoJob(split, name, path, expected=expected, header=header, frame_size=size)


def _frames_job(split: str, name: str, folder: Path, frames: Sequence[Path], link: bool = False) -> VideoJob:
    return VideoJob(split, name, folder, frames=tuple(frames), expected=len(frames),
                    frame_size=_image_size(frames[0]), link=link)


def _check_unique(jobs: Sequence[VideoJob]) -> None:
    seen: dict[tuple[str, str], Path] = {}
    for job in jobs:
        other = seen.setdefault((job.split, job.name), job.source)
        if other != job.source:
            raise UserError(f"{job.source} and {other} would both become {job.split} video '{job.name}': "
                            f"rename one of them")


# --- UCSD ------------------------------------------------------------------------------------------------------

def plan_ucsd(dataset: str, roots: Sequence[Path], opts: Options) -> Plan:
    """UCSD Ped1/Ped2: tif frame folders, the ``.m`` interval file and the ``Test0NN_gt`` masks."""
    folder_name = f"ucsd{dataset}"
    base = find_dir(roots, lambda d: d.name.lower() == folder_name and ((d / "Train").is_dir() or
                                                                         (d / "Test").is_dir()),
                    f"UCSD{dataset} folder with Train/ and Test/ (UCSD_Anomaly_Dataset.v1p2/UCSD{dataset})",
                    exclude=opts.data_root)
    plan = Plan(dataset)
    test_dir = base / "Test"
    for split, sub, prefix in (("training", "Train", "Train"), ("testing", "Test", "Test")):
        folders = _subdirs(base / sub, rf"{prefix}\d+")
        if not folders and not opts.labels_only:
            raise UserError(f"{base / sub} has no {prefix}0NN frame folders: expected the official "
                            f"UCSD{dataset}/{sub}/{prefix}001/001.tif ...")
        for folder in folders:
            name = f"{int(folder.name[len(prefix):]):02d}"
            frames = numbered_files(folder, (".tif", ".tiff"))
            plan.videos.append(_frames_job(split, name, folder, frames))
            if split == "testing":
                plan.test_counts[name] = len(frames)
    sizes = {j.name: j.frame_size for j in plan.videos if j.split == "testing"}
    have_frames = bool(plan.test_counts)
    for folder in _subdirs(test_dir, r"Test\d+_gt"):
        name = f"{int(folder.name[4:-3]):02d}"
        files = numbered_files(folder, (".bmp", ".png", ".tif", ".tiff"))
        if have_frames and name not in plan.test_counts:
            raise UserError(f"{folder} has no test video beside it: expected {test_dir / folder.name[:-3]}")
        if name in plan.test_counts and plan.test_counts[name] != len(files):
            raise UserError(f"{folder} has {len(files)} masks but {folder.name[:-3]} has {plan.test_counts[name]} "
                            f"frames: one of the two folders is incomplete")
        plan.test_counts.setdefault(name, len(files))
        plan.masks.append(MaskJob(name, folder, len(files), lambda f=folder: read_ucsd_gt_mask_folder(f),
                                  sizes.get(name), _image_size(files[0])))
    m_files = [test_dir / f"UCSD{dataset}.m"] + sorted(test_dir.glob("*.m")) if test_dir.is_dir() else []
    m_file = next((p for p in m_files if p.is_file() and _visible(p)), None)
    if m_file is not None:
        plan.label_sources.append(LabelSource(m_file.name, lambda names, counts, p=m_file: dict(
            zip(names, labels_from_ucsd_m(p, counts)))))
    if plan.masks:
        plan.label_sources.append(_prepared_mask_labels(opts, dataset, "the Test0NN_gt pixel masks",
                                                        [m.name for m in plan.masks]))
    if not plan.label_sources and opts.labels is None:
        raise UserError(f"no labels in {test_dir}: expected UCSD{dataset}.m or the Test0NN_gt mask folders (both "
                        f"are in the official UCSD_Anomaly_Dataset.v1p2), or give a label file with --labels")
    return plan


def _prepared_mask_labels(opts: Options, dataset: str, description: str, covered: Sequence[str],
                          convention: str = "") -> LabelSource:
    """Frame labels read back from the prepared pixel masks (any non-zero pixel), for the videos ``covered``."""
    def load(names: Sequence[str], counts: Sequence[int]) -> dict[str, np.ndarray]:
        wanted = [(n, c) for n, c in zip(names, counts) if n in set(covered)]
        masks = load_pixel_masks(opts.data_root, dataset, [n for n, _ in wanted], [c for _, c in wanted])
        return {n: frame_labels_from_masks(m) for (n, _), m in zip(wanted, masks)}
    return LabelSource(description, load, convention)


# --- Avenue ----------------------------------------------------------------------------------------------------

def _avenue_number(path: Path) -> int | None:
    match = re.fullmatch(r"(\d+)_label", path.stem)
    return int(match.group(1)) if match else None


def plan_avenue(roots: Sequence[Path], opts: Options) -> Plan:
    """CUHK Avenue: .avi videos, ``volLabel`` masks (a separate download, ground_truth_demo)."""
    plan = Plan("avenue")
    base = find_dir(roots, lambda d: (d / "training_videos").is_dir() or (d / "testing_videos").is_dir(),
                    "'Avenue Dataset' folder with training_videos/ and testing_videos/",
                    required=not opts.labels_only, exclude=opts.data_root)
    mask_dir = find_dir(roots, lambda d: d.name == "testing_label_mask",
                        "ground_truth_demo/testing_label_mask folder", required=False, exclude=opts.data_root)
    masks: dict[str, Path] = {}
    for path in sorted(_visible_files(mask_dir) if mask_dir else [], key=_natural_key):
        number = _avenue_number(path)
        if path.suffix.lower() != ".mat" or number is None:
            continue
        masks[f"{number:02d}"] = path
    lengths = {name: avenue_mask_length(path) for name, path in masks.items()}
    for split in SPLITS if base is not None else ():
        folder = base / f"{split}_videos"
        videos = sorted((p for p in _visible_files(folder) if p.suffix.lower() == ".avi"), key=_natural_key)
        if not videos and not opts.labels_only:
            raise UserError(f"{folder} has no .avi videos: expected the official 'Avenue Dataset/{split}_videos/"
                            f"01.avi' ...")
        for path in videos:
            name = f"{int(path.stem):02d}" if path.stem.isdigit() else path.stem
            if split == "testing" and masks and name not in masks:
                raise UserError(f"no mask file {mask_dir / f'{int(name)}_label.mat'} for test video {path}: "
                                f"the testing_label_mask folder is incomplete")
            plan.videos.append(_video_job(split, name, path, lengths.get(name) if split == "testing" else None))
    tests = {j.name: j for j in plan.videos if j.split == "testing"}
    if tests and set(masks) - set(tests):
        extra = sorted(set(masks) - set(tests))
        raise UserError(f"{masks[extra[0]]} has no test video {extra[0]}.avi in {base / 'testing_videos'}")
    plan.test_counts = {name: lengths.get(name, job.header) for name, job in tests.items()} or dict(lengths)
    for name, path in masks.items():
        size = tests[name].frame_size if name in tests else None
        plan.masks.append(MaskJob(name, path, lengths[name], lambda p=path: read_avenue_label_mat(p), size,
                                  (360, 640)))
    if masks:
        plan.label_sources.append(_prepared_mask_labels(opts, "avenue", "the volLabel pixel masks", list(masks),
                                                        convention="masks"))
    elif opts.labels is None:
        raise UserError("no Avenue labels: expected ground_truth_demo/testing_label_mask/<n>_label.mat (the separate "
                        "'ground_truth_demo' download; add it with a second --src), or an ano_pred avenue.mat "
                        "with --labels")
    if opts.labels is None and masks:
        plan.notes.append("Avenue frame labels come from the volLabel pixel masks (3,712 anomalous frames in the "
                          "full set); published FFP/MNAD numbers use the ano_pred avenue.mat (3,867): pass it with "
                          "--labels to use that convention")
    return plan


# --- ShanghaiTech ----------------------------------------------------------------------------------------------

def plan_shanghai(roots: Sequence[Path], opts: Options) -> Plan:
    """ShanghaiTech Campus: training .avi videos, test JPEG folders, per-video frame and pixel masks."""
    plan = Plan("shanghai", label_format="frame_mask")
    base = find_dir(roots, lambda d: (d / "training" / "videos").is_dir() or (d / "testing" / "frames").is_dir(),
                    "ShanghaiTech folder with training/videos/ and testing/frames/", exclude=opts.data_root)
    videos = sorted((p for p in _visible_files(base / "training" / "videos")
                     if p.suffix.lower() not in NOT_VIDEOS), key=_natural_key)
    if not videos and not opts.labels_only:
        raise UserError(f"{base / 'training' / 'videos'} has no videos: expected the official "
                        f"training/videos/01_001.avi ...")
    plan.videos += [_video_job("training", p.stem, p) for p in videos]
    folders = _subdirs(base / "testing" / "frames", r".+")
    if not folders:
        raise UserError(f"{base / 'testing' / 'frames'} has no video folders: expected the official "
                        f"testing/frames/01_0014/000.jpg ...")
    link = opts.image_format == "jpg"
    for folder in folders:
        frames = numbered_files(folder, (".jpg", ".jpeg", ".png"))
        same_format = all(p.suffix.lower() in (".jpg", ".jpeg") for p in frames)
        plan.videos.append(_frames_job("testing", folder.name, folder, frames, link=link and same_format))
        plan.test_counts[folder.name] = len(frames)
    tests = {j.name: j for j in plan.videos if j.split == "testing"}
    frame_masks = base / "testing" / "test_frame_mask"
    if frame_masks.is_dir():
        plan.label_sources.append(LabelSource("testing/test_frame_mask", lambda names, counts: dict(
            zip(names, load_labels(frame_masks, names, counts)))))
    elif opts.labels is None:
        raise UserError(f"no frame labels at {frame_masks}: expected the official testing/test_frame_mask/"
                        f"<video>.npy, or give a label file with --labels")
    for path in sorted(_visible_files(base / "testing" / "test_pixel_mask"), key=_natural_key):
        if path.suffix.lower() != ".npy":
            continue
        if path.stem not in tests:
            raise UserError(f"pixel mask {path} has no test video {path.stem} in {base / 'testing' / 'frames'}")
        masks = read_npy_masks(path)
        plan.masks.append(MaskJob(path.stem, path, masks.shape[0], lambda p=path: read_npy_masks(p),
                                  tests[path.stem].frame_size, masks.shape[1:], masks.dtype == np.uint8))
    return plan


# --- custom ----------------------------------------------------------------------------------------------------

def plan_custom(roots: Sequence[Path], opts: Options) -> Plan:
    """A user's own footage: ``training``/``train`` and ``testing``/``test`` folders of videos (or frame folders)."""
    plan = Plan("custom")
    if len(roots) != 1 or not roots[0].is_dir():
        raise UserError("custom needs one --src folder holding training/ (normal videos) and testing/ (videos to "
                        "score), see README 'Data'")
    root = roots[0]
    found = False
    for split, names in (("training", ("training", "train")), ("testing", ("testing", "test"))):
        folder = next((root / n for n in names if (root / n).is_dir()), None)
        if folder is None:
            continue
        found = True
        for entry in sorted((p for p in folder.iterdir() if _visible(p)), key=_natural_key):
            if entry.is_dir():
                plan.videos.append(_frames_job(split, entry.name, entry, _image_files(entry)))
            elif entry.suffix.lower() not in NOT_VIDEOS:
                plan.videos.append(_video_job(split, entry.stem, entry))
    if not found:
        raise UserError(f"{root} has neither training/ nor testing/: put normal videos in {root / 'training'} and "
                        f"the videos to score in {root / 'testing'}")
    _check_unique(plan.videos)
    plan.test_counts = {j.name: j.expected or j.header for j in plan.videos if j.split == "testing"}
    label_file = opts.labels or next((root / n for n in ("labels.csv", "labels.txt") if (root / n).is_file()), None)
    if label_file is not None:
        plan.label_sources.append(LabelSource(label_file.name, lambda names, counts: dict(
            zip(names, read_label_file(label_file, names, counts)))))
    elif plan.test_counts:
        plan.notes.append(f"no labels.csv in {root}: frames are prepared but eval.py needs labels (README 'Data')")
    return plan


def make_plan(dataset: str, roots: Sequence[Path], opts: Options) -> Plan:
    if dataset in ("ped1", "ped2"):
        plan = plan_ucsd(dataset, roots, opts)
    elif dataset == "avenue":
        plan = plan_avenue(roots, opts)
    elif dataset == "shanghai":
        plan = plan_shanghai(roots, opts)
    else:
        plan = plan_custom(roots, opts)
    _check_unique(plan.videos)
    if opts.labels is not None and dataset != "custom":
        path = opts.labels
        plan.label_sources.insert(0, LabelSource(path.name, lambda names, counts: dict(
            zip(names, read_label_file(path, names, counts))), convention=""))
    return plan


# --- archives --------------------------------------------------------------------------------------------------

def _is_archive(path: Path) -> bool:
    return path.is_file() and any(path.name.lower().endswith(s) for s in ARCHIVE_SUFFIXES)


def _member_filter(dataset: str) -> Callable[[str], bool]:
    """Only the requested UCSD subset is extracted from the UCSD archive (it holds both)."""
    if dataset in ("ped1", "ped2"):
        other = "ucsdped1" if dataset == "ped2" else "ucsdped2"
        return lambda name: other not in name.lower().replace("\\", "/").split("/")
    return lambda name: True


def _archive_members(path: Path, keep: Callable[[str], bool]) -> tuple[int, Callable[[Path], None]]:
    """(uncompressed bytes of the kept members, extract(into)) of a tar or zip archive."""
    try:
        if path.name.lower().endswith(".zip"):
            archive = zipfile.ZipFile(path)
            infos = [i for i in archive.infolist() if keep(i.filename)]
            return sum(i.file_size for i in infos), lambda into: archive.extractall(into, members=infos)
        tar = tarfile.open(path)
        members = [m for m in tar.getmembers() if keep(m.name)]
        return sum(m.size for m in members), lambda into: tar.extractall(into, members=members, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as exc:
        raise UserError(f"cannot read archive {path} ({exc}): the download is incomplete or damaged") from None


def stage_sources(sources: Sequence[Path], dataset: str, staging: Path) -> tuple[list[Path], list[Path]]:
    """(folders to read, staging folders to remove afterwards): archives are extracted under ``staging``."""
    roots, staged = [], []
    for src in sources:
        src = Path(src)
        if not src.exists():
            raise UserError(f"--src {src} does not exist: give the downloaded folder or archive")
        if src.is_dir():
            roots.append(src)
            continue
        if not _is_archive(src):
            raise UserError(f"--src {src} is neither a folder nor an archive ({', '.join(ARCHIVE_SUFFIXES)})")
        target = staging / re.sub(r"[^\w.-]", "_", src.name)
        marker = target / ".complete"
        stamp = f"{src.stat().st_size}"
        if not (marker.exists() and marker.read_text() == stamp):
            size, extract = _archive_members(src, _member_filter(dataset))
            if size * 1.02 + 64e6 > free_bytes(staging):
                raise UserError(f"extracting {src} needs about {_human(size)} but {staging} has only "
                                f"{_human(free_bytes(staging))} free: extract it yourself elsewhere and pass the "
                                f"folder, or free some space")
            print(f"extracting {src} ({_human(size)}) into {target}", file=sys.stderr)
            shutil.rmtree(target, ignore_errors=True)
            partial = target.with_name(target.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            extract(partial)
            (partial / ".complete").write_text(stamp)
            os.replace(partial, target)
        roots.append(target)
        staged.append(target)
    return roots, staged


# --- writing one video ------------------------------------------------------------------------------------------

def _frame_name(index: int, digits: int, extension: str) -> str:
    return f"{index:0{digits}d}.{extension}"


def _digits(dataset: str, count: int) -> int:
    return max(FRAME_DIGITS.get(dataset, 3), len(str(max(count - 1, 0))))


def _fingerprint(job: VideoJob, opts: Options) -> dict:
    """What identifies a finished video: the source's size (not its path or mtime, which moving or re-extracting
    a download changes) and the output format."""
    files = job.frames if job.frames is not None else (job.source,)
    return {"source_files": len(files), "source_bytes": sum(p.stat().st_size for p in files),
            "format": "copy" if job.link else opts.image_format,
            "quality": opts.jpeg_quality if opts.image_format == "jpg" else None}


def _count_frames(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS and _visible(p))


def video_state(job: VideoJob, split_dir: Path, opts: Options) -> str:
    """'done' (finished, same source), 'foreign' (a folder this tool did not write, right length), or 'todo'."""
    final = split_dir / job.name
    if not final.is_dir():
        return "todo"
    try:
        manifest = json.loads((final / MANIFEST).read_text())
    except (OSError, ValueError):
        manifest = None
    count = _count_frames(final)
    if manifest is None:
        if job.expected is not None and count == job.expected:
            return "foreign"
        want = f"{job.expected} frames" if job.expected is not None else "a manifest"
        raise UserError(f"{final} exists but was not written by prepare_data (it has {count} frames, expected "
                        f"{want}): remove it, or choose another --data_root")
    if manifest.get("frames") == count and manifest.get("fingerprint") == _fingerprint(job, opts):
        return "done"
    return "todo"


def _write_image(path: Path, image: np.ndarray, opts: Options) -> None:
    params = [cv2.IMWRITE_JPEG_QUALITY, opts.jpeg_quality] if opts.image_format == "jpg" else []
    if not cv2.imwrite(str(path), image, params):
        raise UserError(f"cannot write {path}: the disk is full or the folder is not writable")


def _place_file(src: Path, dst: Path, mode: str) -> None:
    if mode in ("auto", "hardlink"):
        try:
            os.link(src, dst)
            return
        except OSError:
            if mode == "hardlink":
                raise UserError(f"cannot hard-link {src} to {dst} (another file system?): use --link=copy") from None
    if mode == "symlink":
        os.symlink(src.resolve(), dst)
    else:
        shutil.copyfile(src, dst)


def _check_jpeg(path: Path) -> None:
    """A JPEG starts with FF D8 and ends with FF D9 (a truncated file does not): cheap, no decoding."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(2)
        handle.seek(max(0, size - 64))
        tail = handle.read()
    if head != b"\xff\xd8" or b"\xff\xd9" not in tail:
        raise UserError(f"frame {path} is not a complete JPEG (empty or truncated download?)")


def _iter_source(job: VideoJob) -> Iterable[np.ndarray]:
    """Decoded BGR frames of a job: a video file's frames, or a folder's images (grey -> 3 equal channels)."""
    if job.frames is not None:
        for path in job.frames:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise UserError(f"cannot read frame {path}: the file is empty or not an image")
            yield image
        return
    capture = cv2.VideoCapture(str(job.source))
    if not capture.isOpened():
        raise UserError(f"cannot open video {job.source} with OpenCV: the file is damaged or not a video")
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield frame
    finally:
        capture.release()


def _write_frames(job: VideoJob, folder: Path, dataset: str, opts: Options, stop: threading.Event) -> int:
    if job.link:
        digits = _digits(dataset, len(job.frames))
        for t, path in enumerate(job.frames):
            if stop.is_set():
                raise KeyboardInterrupt
            _check_jpeg(path)
            _place_file(path, folder / _frame_name(t, digits, "jpg"), opts.link)
        return len(job.frames)
    digits = _digits(dataset, job.expected or job.header)
    size = None
    count = 0
    for image in _iter_source(job):
        if stop.is_set():
            raise KeyboardInterrupt
        if size is None:
            size = image.shape
        elif image.shape != size:
            raise UserError(f"{job.source}: frame {count} is {image.shape[1]}x{image.shape[0]} but the first frame "
                            f"is {size[1]}x{size[0]}: a video's frames must all have one size")
        _write_image(folder / _frame_name(count, digits, opts.image_format), image, opts)
        count += 1
    return count


def _check_frame_count(job: VideoJob, count: int) -> None:
    if count == 0:
        raise UserError(f"{job.source}: no frame could be decoded: the file is damaged or not a video")
    if job.expected is not None and count != job.expected:
        raise UserError(f"{job.source} gives {count} frames but {job.expected} were expected (from its label masks "
                        f"or file listing): the video is truncated or damaged, or is not the official file")
    if job.expected is None and count < job.header:
        raise UserError(f"{job.source} ends after {count} of the {job.header} frames its header announces: the "
                        f"file is truncated or damaged (re-download it, or remove it)")


@dataclass(frozen=True)
class VideoResult:
    job: VideoJob
    frames: int
    status: str  # written | done | foreign


def prepare_video(job: VideoJob, dataset: str, opts: Options, stop: threading.Event) -> VideoResult:
    """Write one video's frames into ``.partial-<name>`` and rename it into place (skip it when finished)."""
    split_dir = Path(opts.data_root) / dataset / job.split / "frames"
    state = video_state(job, split_dir, opts)
    final = split_dir / job.name
    if state != "todo":
        return VideoResult(job, _count_frames(final), state)
    partial = split_dir / f".partial-{job.name}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        count = _write_frames(job, partial, dataset, opts, stop)
        _check_frame_count(job, count)
        manifest = {"source": str(job.source), "frames": count, "fingerprint": _fingerprint(job, opts)}
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        if final.exists():  # a stale or changed video: swap, then drop the old one
            old = split_dir / f".old-{job.name}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(partial, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return VideoResult(job, count, "written")


# --- writing one video's pixel masks -----------------------------------------------------------------------------

def prepare_mask(job: MaskJob, dataset: str, opts: Options, stop: threading.Event) -> str:
    """Write ``pixel_masks/<name>.npy`` (uint8 {0, 1}, (T, H, W)) atomically; 'done' when already there."""
    path = pixel_mask_path(opts.data_root, dataset, job.name)
    if path.exists():
        try:
            existing = np.load(path, mmap_mode="r", allow_pickle=False)
            if existing.dtype == np.uint8 and existing.ndim == 3 and existing.shape[0] == job.frames:
                return "done"
        except (ValueError, OSError):
            pass
    masks = job.load()
    if len(masks) != job.frames:
        raise UserError(f"{job.source} has {len(masks)} masks but test video {job.name} has {job.frames} frames")
    height, width = np.asarray(masks[0]).shape[:2]
    if job.frame_size is not None and (height, width) != tuple(job.frame_size):
        raise UserError(f"{job.source}: masks are {width}x{height} but the frames of test video {job.name} are "
                        f"{job.frame_size[1]}x{job.frame_size[0]}")
    if job.linkable and _is_binary(masks, stop):  # ShanghaiTech's own uint8 0/1 masks: no second 16 GB copy
        tmp = path.with_name(f".{path.name}.partial")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)
        _place_file(job.source, tmp, "copy" if opts.link == "symlink" else opts.link)
        os.replace(tmp, path)
        return "linked"
    with atomic_path(path, suffix=".npy") as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(job.frames, height, width))
        for t in range(job.frames):
            if stop.is_set():
                raise KeyboardInterrupt
            frame = np.asarray(masks[t])
            if frame.shape != (height, width):
                raise UserError(f"{job.source}: mask {t} is {frame.shape[1]}x{frame.shape[0]}, the first is "
                                f"{width}x{height}")
            out[t] = frame > 0
        out.flush()
        del out
        _readable(tmp)
    return "written"


def _is_binary(masks: np.ndarray, stop: threading.Event) -> bool:
    for lo in range(0, len(masks), 64):
        if stop.is_set():
            raise KeyboardInterrupt
        if np.asarray(masks[lo:lo + 64]).max(initial=0) > 1:
            return False
    return True


# --- running jobs on both cores ----------------------------------------------------------------------------------

def run_parallel(jobs: Sequence, work: Callable, desc: str, opts: Options) -> list:
    """``work(job, stop)`` for every job on ``opts.workers`` threads (OpenCV and zlib release the GIL), with a
    progress bar.  A UserError of one job does not stop the others; they are all reported at the end.  Ctrl-C (or
    any other exception) stops every job at its next frame; finished jobs stay finished."""
    from tqdm import tqdm

    stop = threading.Event()
    results, failures = [], []

    def guarded(job):
        # A job that fails other than by a UserError (Ctrl-C, a full disk) sets `stop` itself, at once: waiting for
        # the main thread to see it let the next queued job start and finish meanwhile on a busy machine.
        try:
            return work(job, stop)
        except UserError:
            raise
        except BaseException:
            stop.set()
            raise

    pool = ThreadPoolExecutor(max_workers=max(1, opts.workers))
    futures = [pool.submit(guarded, job) for job in jobs]
    try:
        with tqdm(total=len(jobs), desc=desc, unit="video", disable=not opts.progress or not jobs,
                  file=sys.stderr) as bar:
            for future in as_completed(futures):
                try:
                    results.append(future.result())
                except UserError as exc:
                    failures.append(str(exc))
                bar.update(1)
    except BaseException:
        stop.set()
        for future in futures:
            future.cancel()
        raise
    finally:
        pool.shutdown(wait=True)
    if len(failures) == 1:
        raise UserError(f"{failures[0]} (the other videos are done; run again once this is fixed)")
    if failures:
        for message in failures:
            print(f"error: {message}", file=sys.stderr)
        raise UserError(f"{len(failures)} videos could not be prepared (each named above); the others are done: "
                        f"fix or remove these and run again")
    return results


# --- disk space --------------------------------------------------------------------------------------------------

def _sample_frame_bytes(job: VideoJob, opts: Options) -> float:
    """Bytes of one output frame of ``job``: its first frame, encoded as it will be."""
    if job.link:
        same_device = job.frames[0].stat().st_dev == free_device(opts.data_root)
        if opts.link == "symlink" or (opts.link in ("auto", "hardlink") and same_device):
            return 0.0
        return float(np.mean([p.stat().st_size for p in job.frames[:8]]))
    frames = _iter_source(job)
    try:
        image = next(frames)
    finally:
        frames.close()
    ext = ".jpg" if opts.image_format == "jpg" else ".png"
    params = [cv2.IMWRITE_JPEG_QUALITY, opts.jpeg_quality] if opts.image_format == "jpg" else []
    ok, data = cv2.imencode(ext, image, params)
    return float(len(data)) if ok else float(image.nbytes)


def free_device(path: Path) -> int:
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return path.stat().st_dev


def estimate_bytes(videos: Sequence[VideoJob], masks: Sequence[MaskJob], opts: Options) -> int:
    """Disk space the remaining work needs: frames (a few sampled per split, +25 %) and pixel masks (exact)."""
    total = 0.0
    for split in SPLITS:
        jobs = [j for j in videos if j.split == split]
        if not jobs:
            continue
        sample = [jobs[int(i)] for i in np.linspace(0, len(jobs) - 1, min(5, len(jobs)))]
        per_frame = float(np.mean([_sample_frame_bytes(j, opts) for j in sample]))
        frames = sum(j.expected or j.header or 1 for j in jobs)
        total += 1.25 * per_frame * frames
    for job in masks:
        height, width = job.frame_size or job.size_hint
        linked = job.linkable and opts.link in ("auto", "hardlink") and \
            job.source.stat().st_dev == free_device(opts.data_root)
        total += 0 if linked else job.frames * height * width + 128
    return int(total)


def check_space(videos: Sequence[VideoJob], masks: Sequence[MaskJob], opts: Options) -> int:
    need = estimate_bytes(videos, masks, opts)
    free = free_bytes(opts.data_root)
    if need + 64e6 > free:
        raise UserError(f"preparing needs about {_human(need)} at {opts.data_root} but only {_human(free)} is free: "
                        f"free some space or choose another --data_root (finished videos are kept and not redone)")
    return need


# --- the whole preparation -----------------------------------------------------------------------------------------

@dataclass
class Summary:
    dataset: str
    data_root: Path
    splits: dict[str, tuple[int, int]] = field(default_factory=dict)  # split -> (videos, frames)
    anomalous: int | None = None
    label_file: Path | None = None
    label_description: str = ""
    convention: str = ""
    pixel_masks: int = 0
    written: int = 0
    written_frames: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"{self.dataset}: prepared in {Path(self.data_root) / self.dataset}"]
        published = PUBLISHED.get(self.dataset, {})
        for split in SPLITS:
            if split not in self.splits:
                out.append(f"  {split}: not prepared")
                continue
            videos, frames = self.splits[split]
            text = f"  {split}: {videos:,} videos, {frames:,} frames"
            want = published.get(split)
            got: tuple = (videos, frames)
            if split == "testing" and self.anomalous is not None:
                text += f", {self.anomalous:,} anomalous"
                anomalous = published.get("anomalous", {})
                if want is not None:
                    want = (*want, anomalous.get(self.convention, anomalous.get("")))
                    got = (videos, frames, self.anomalous)
            if want is not None:
                text += f"  -- {_compare(got, want)}"
            out.append(text)
        if self.label_file is not None:
            out.append(f"  labels: {self.label_file} (from {self.label_description})")
        if self.pixel_masks:
            out.append(f"  pixel masks: {self.pixel_masks} test videos in "
                       f"{Path(self.data_root) / self.dataset / 'testing' / PIXEL_MASKS}")
        if self.written:
            rate = self.written_frames / self.seconds if self.seconds > 0 else 0.0
            out.append(f"  this run: {self.written} videos, {self.written_frames:,} frames written in "
                       f"{self.seconds:.1f} s ({rate:.0f} frames/s)")
        out += [f"  note: {n}" for n in self.notes]
        return out


def _compare(got: tuple, want: tuple) -> str:
    names = ("videos", "frames", "anomalous")
    published = " / ".join(f"{w:,}" for w in want)
    if tuple(got) == tuple(want):
        return f"matches published ({published})"
    diffs = ", ".join(f"{g - w:+,} {n}" for g, w, n in zip(got, want, names) if g != w)
    return f"differs from published ({published}): {diffs}"


def _test_order(names: Iterable[str]) -> list[str]:
    return sorted(names, key=lambda n: _natural_key(Path(n)))


def _stray_folders(plan: Plan, opts: Options) -> None:
    """A video folder in the output that the source does not have would silently join the dataset: refuse."""
    for split in SPLITS:
        folder = Path(opts.data_root) / plan.dataset / split / "frames"
        planned = {j.name for j in plan.videos if j.split == split}
        if not folder.is_dir() or (opts.labels_only and not planned):
            continue
        for entry in folder.iterdir():
            if entry.is_dir() and _visible(entry) and entry.name not in planned and planned:
                raise UserError(f"{entry} is not a video of this source (left from another run?): remove it, or "
                                f"choose another --data_root")
            if entry.is_dir() and entry.name.startswith((".partial-", ".old-")):
                shutil.rmtree(entry, ignore_errors=True)  # left by a crashed run


def _compare_sources(plan: Plan, primary: dict[str, np.ndarray], names: Sequence[str],
                     counts: Sequence[int]) -> list[str]:
    notes = []
    for source in plan.label_sources[1:]:
        other = source.load(names, counts)
        common = [n for n in names if n in other]
        if not common:
            continue
        diffs = {n: int(np.sum(primary[n] != other[n])) for n in common}
        frames = sum(len(other[n]) for n in common)
        bad = {n: d for n, d in diffs.items() if d}
        if not bad:
            notes.append(f"{plan.label_sources[0].description} and {source.description} agree on all "
                         f"{frames:,} frames of {len(common)} videos")
        else:
            detail = ", ".join(f"{n}: {d}" for n, d in list(bad.items())[:8])
            notes.append(f"{plan.label_sources[0].description} and {source.description} DISAGREE on "
                         f"{sum(bad.values()):,} of {frames:,} frames ({detail}); the labels written are "
                         f"{plan.label_sources[0].description}'s")
    return notes


def write_labels(plan: Plan, opts: Options, names: Sequence[str], counts: Sequence[int], summary: Summary) -> None:
    """Labels from the first source, checked against the frame counts, compared with the others, written."""
    if not plan.label_sources or not names:
        return
    primary_source = plan.label_sources[0]
    primary = primary_source.load(names, counts)
    missing = [n for n in names if n not in primary]
    if missing:
        raise UserError(f"{primary_source.description} has no labels for test videos {', '.join(missing[:5])}")
    summary.notes += _compare_sources(plan, primary, names, counts)
    labels = [primary[n] for n in names]
    normal = [n for n, y in zip(names, labels) if not y.any()]
    if plan.dataset == "custom" and normal:  # a misspelt name in labels.csv would look like this: say so
        summary.notes.append(f"{len(normal)} test videos have no anomalous frame in {primary_source.description}: "
                             f"{', '.join(normal[:10])}{' ...' if len(normal) > 10 else ''}")
    root = Path(opts.data_root) / plan.dataset
    if plan.label_format == "frame_mask":
        path = root / "testing" / "test_frame_mask"
        write_frame_mask_folder(path, names, labels)
    else:
        path = root / f"{plan.dataset}.mat"
        write_ano_pred_mat(path, labels)
    reread = load_labels(path, names, counts)  # what eval.py will read, checked
    assert all(np.array_equal(a, b) for a, b in zip(reread, labels))
    summary.label_file, summary.label_description = path, primary_source.description
    summary.anomalous, summary.convention = int(sum(y.sum() for y in labels)), primary_source.convention


def _test_names_and_counts(plan: Plan, opts: Options) -> tuple[list[str], list[int]]:
    """The test videos in loader order with their frame counts: the prepared frames when there are any."""
    folder = Path(opts.data_root) / plan.dataset / "testing" / "frames"
    if folder.is_dir() and any(_visible(p) for p in folder.iterdir()):
        videos = list_videos(folder)
        names, counts = [v.name for v in videos], [len(v.frames) for v in videos]
        for name, count in zip(names, counts):
            if plan.test_counts.get(name, count) != count:
                raise UserError(f"{folder / name} has {count} frames but the source's test video has "
                                f"{plan.test_counts[name]}: prepare the frames again (without --labels_only)")
        return names, counts
    names = _test_order(plan.test_counts)
    return names, [plan.test_counts[n] for n in names]


def prepare(dataset: str, sources: Sequence[Path], opts: Options) -> Summary:
    """Prepare ``dataset`` from the downloaded ``sources`` into ``opts.data_root`` (see the module docstring)."""
    dataset = ALIASES.get(dataset.lower(), dataset.lower())
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset '{dataset}': valid names are {', '.join(DATASETS)}, shanghaitech")
    if not sources:
        raise UserError("no --src given: pass the downloaded folder or archive")
    data_root = Path(opts.data_root)
    for src in sources:
        src = Path(src).resolve()
        if src == data_root.resolve() / dataset or data_root.resolve() / dataset in src.parents:
            raise UserError(f"--src {src} is inside the output {data_root / dataset}: prepare into another "
                            f"--data_root (the source is never modified)")
    staging = data_root / ".prepare" / dataset
    roots, staged = stage_sources(sources, dataset, staging)
    if staged and opts.link == "symlink":
        raise UserError("--link=symlink cannot be used with an archive source (the extracted files are removed at "
                        "the end): use --link=auto or copy")
    plan = make_plan(dataset, roots, opts)
    summary = Summary(dataset, data_root, notes=list(plan.notes))
    _stray_folders(plan, opts)
    videos = [] if opts.labels_only else plan.videos
    todo = [j for j in videos
            if video_state(j, data_root / dataset / j.split / "frames", opts) == "todo"]
    masks_todo = [m for m in plan.masks if not pixel_mask_path(data_root, dataset, m.name).exists()]
    need = check_space(todo, masks_todo, opts)
    if todo or masks_todo:
        work = f"{len(todo)} of {len(videos)} videos and " if videos else "labels only: "
        print(f"{dataset}: {work}{len(masks_todo)} pixel-mask files to write (about {_human(need)}; "
              f"{_human(free_bytes(data_root))} free)", file=sys.stderr)
    start = time.perf_counter()
    results = run_parallel(videos, lambda job, stop: prepare_video(job, dataset, opts, stop),
                           f"{dataset} frames", opts)
    summary.seconds = time.perf_counter() - start
    run_parallel(plan.masks, lambda job, stop: prepare_mask(job, dataset, opts, stop), f"{dataset} pixel masks",
                 opts)
    summary.written = sum(r.status == "written" for r in results)
    summary.written_frames = sum(r.frames for r in results if r.status == "written")
    if any(r.status == "foreign" for r in results):
        summary.notes.append(f"{sum(r.status == 'foreign' for r in results)} video folders already present (not "
                             f"written by this tool) have the right frame counts and were kept")
    for split in SPLITS:
        folder = data_root / dataset / split / "frames"
        if folder.is_dir() and any(_visible(p) for p in folder.iterdir()):
            listed = list_videos(folder)  # what train.py / eval.py will see
            summary.splits[split] = (len(listed), sum(len(v.frames) for v in listed))
    names, counts = _test_names_and_counts(plan, opts)
    if "testing" not in summary.splits and names:
        summary.splits["testing"] = (len(names), sum(counts))
        summary.notes.append("testing counts are the source's (no frames prepared)")
    write_labels(plan, opts, names, counts, summary)
    summary.pixel_masks = len(plan.masks)
    if staged and not opts.keep_extracted:
        for folder in staged:
            shutil.rmtree(folder, ignore_errors=True)
        for folder in (staging, staging.parent):  # <data_root>/.prepare/<dataset>, then .prepare
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    return summary
