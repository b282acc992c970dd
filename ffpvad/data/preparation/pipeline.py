"""The machinery of the preparation: the plan (what to write), its jobs, writing them, and the whole run.

What is read is up to each dataset's planner (``ucsd.py``, ``avenue.py``, ``shanghai.py``, ``custom.py`` beside
this module), found by name in :data:`PLANNERS`; this module knows no dataset.  Nothing here downloads: the user
brings the files (a folder, or a .tar/.tar.gz/.tgz/.zip archive, which is extracted to a hidden staging folder under
the data root and removed afterwards; the source itself is never modified).  The label and mask formats are read and
written by ``ffpvad/data/labels.py``.

What is written (what ffpvad/data/dataset.py reads)::

    <data_root>/<dataset>/{training,testing}/frames/<video>/000.jpg ...   0-based, contiguous
    <data_root>/<dataset>/<dataset>.mat                                   ano_pred labels (not shanghai)
    <data_root>/shanghai/testing/test_frame_mask/<video>.npy               ShanghaiTech's own label format
    <data_root>/<dataset>/testing/pixel_masks/<video>.npy                  uint8 (T, H, W) in {0, 1}

Choices.  Frames are JPEG at quality 95 by default (``png`` on request): the layout of the public ``ped2.tar.gz``
that the FFP/MNAD ports use (3-channel JPEG, R=G=B for the grey UCSD sets, 0-based ``000.jpg``; Avenue ``0000.jpg``).
Frames already in the output format (ShanghaiTech's test JPEGs) are hard-linked (or copied) unchanged, not
re-encoded.  When a dataset has several label sources (UCSD's ``.m`` file and its masks), the first is written and
the others are compared with it; ``labels=`` (``--labels``) replaces them all.

Robustness.  Every video is written into ``.partial-<video>`` beside its final folder and renamed into place when
complete, with a ``.prepared.json`` manifest (source size, frame count, format) inside, so a crash never leaves a
half video that looks complete; a rerun skips finished videos, redoes unfinished or changed ones, and checks every
frame count (against the masks, the file listing or the container's header) so a short or unreadable video is named,
never silently truncated.  The source is only ever read: an output inside a source, a source inside the output and
a source already in the prepared layout are refused (:func:`check_sources`).  Bad inputs are
:class:`errors.UserError` with one line naming the file.  An archive's members are all checked before anything is
extracted (:func:`open_archive`: nothing leads out of the staging folder).  A failed write (full disk, read-only) is
one :class:`errors.WriteFailed` line that stops every worker, leaves no partial folder and keeps finished videos.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import sys
import tarfile
import threading
import time
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from ffpvad.config import DATASET_ALIASES, canonical_dataset
from ffpvad.errors import UserError, WriteFailed, is_write_error, write_failed
from ffpvad.data.frames import FRAME_EXTENSIONS, PREPARED_MANIFEST, frame_file_name, is_frame, is_visible, natural_key
from ffpvad.ioutil import atomic_path, ensure_writable_dir
from ffpvad.data.labels import (PIXEL_MASKS, frame_labels_from_masks, load_labels, load_npy, load_pixel_masks,
                    pixel_mask_path, read_label_file, write_ano_pred_mat, write_frame_mask_folder)
from ffpvad.registry import Registry
from ffpvad.data.video_io import read_image, write_image

SPLITS = ("training", "testing")
MANIFEST = PREPARED_MANIFEST  # the loader checks a video's frame count against it (dataset.check_frame_numbering)
DATA_ROOT_FIX = "choose another --data_root"
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")
NOT_VIDEOS = (".txt", ".csv", ".md", ".json", ".npy", ".mat", ".m", ".py", ".pdf", ".html", ".xml", ".ini")

# One planner per dataset, ``planner(dataset, roots, opts) -> Plan``, registered by its module with optional info:
#   published        {split: (videos, frames), "anomalous": {convention: frames}}: the summary compares with it
#   frame_digits     zero padding of frame names (default 3; Avenue 4, ano_pred's 0000.jpg)
#   archive_members  name -> bool: the members of an archive source to extract (default all)
#   user_labels      the planner reads --labels itself, and test videos with no anomalous frame are listed
PLANNERS: Registry[Callable[..., "Plan"]] = Registry("dataset")


# --- small file helpers ---------------------------------------------------------------------------------------

def image_files(folder: Path) -> list[Path]:
    """A user's frame folder: every image in natural name order (any names)."""
    files = sorted((p for p in folder.iterdir() if p.is_file() and is_visible(p)
                    and p.suffix.lower() in FRAME_EXTENSIONS), key=natural_key)
    if not files:
        raise UserError(f"{folder} has no frames ({', '.join(FRAME_EXTENSIONS)}): expected one image per frame")
    return files


def subdirs(folder: Path, pattern: str) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and is_visible(p) and re.fullmatch(pattern, p.name)),
                  key=natural_key) if folder.is_dir() else []


def visible_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file() and is_visible(p)] if folder.is_dir() else []


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
    convention: str = ""  # key into the planner's published["anomalous"]


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


def find_dir(roots: Sequence[Path], accept: Callable[[Path], bool], what: str, depth: int = 4,
             required: bool = True) -> Path | None:
    """The first folder (breadth first, ``depth`` levels, hidden folders skipped) under ``roots`` that ``accept``s
    (the output is never inside a source: :func:`check_sources`)."""
    level = [Path(r) for r in roots]
    for _ in range(depth + 1):
        for folder in level:
            if folder.is_dir() and accept(folder):
                return folder
        level = [c for f in level if f.is_dir() for c in sorted(f.iterdir(), key=natural_key)
                 if c.is_dir() and is_visible(c)]
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


def image_size(path: Path) -> tuple[int, int]:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise UserError(f"cannot read frame {path}: the file is empty or not an image")
    return image.shape[:2]


def video_job(split: str, name: str, path: Path, expected: int | None = None) -> VideoJob:
    header, size = open_video(path)
    return VideoJob(split, name, path, expected=expected, header=header, frame_size=size)


def frames_job(split: str, name: str, folder: Path, frames: Sequence[Path], link: bool = False) -> VideoJob:
    return VideoJob(split, name, folder, frames=tuple(frames), expected=len(frames),
                    frame_size=image_size(frames[0]), link=link)


def check_unique(jobs: Sequence[VideoJob]) -> None:
    seen: dict[tuple[str, str], Path] = {}
    for job in jobs:
        other = seen.setdefault((job.split, job.name), job.source)
        if other != job.source:
            raise UserError(f"{job.source} and {other} would both become {job.split} video '{job.name}': "
                            f"rename one of them")


def prepared_mask_labels(opts: Options, dataset: str, description: str, covered: Sequence[str],
                         convention: str = "") -> LabelSource:
    """Frame labels read back from the prepared pixel masks (any non-zero pixel), for the videos ``covered``."""
    def load(names: Sequence[str], counts: Sequence[int]) -> dict[str, np.ndarray]:
        wanted = [(n, c) for n, c in zip(names, counts) if n in set(covered)]
        masks = load_pixel_masks(opts.data_root, dataset, [n for n, _ in wanted], [c for _, c in wanted])
        return {n: frame_labels_from_masks(m) for (n, _), m in zip(wanted, masks)}
    return LabelSource(description, load, convention)


def dataset_name(dataset: str) -> str:
    """The planner's name of ``dataset``, aliases resolved as everywhere else (``config.canonical_dataset``)."""
    try:
        name = canonical_dataset(dataset)
    except UserError:  # not a dataset at all: said below, with the names that can be prepared
        name = dataset.lower()
    if name not in PLANNERS:
        aliases = [alias for alias, target in sorted(DATASET_ALIASES.items()) if target in PLANNERS]
        raise UserError(f"unknown dataset '{dataset}': valid names are {', '.join(PLANNERS.names() + aliases)}")
    return name


def make_plan(dataset: str, roots: Sequence[Path], opts: Options) -> Plan:
    """What to prepare from the folders ``roots``: the registered planner of ``dataset``, plus ``--labels``."""
    plan = PLANNERS.get(dataset)(dataset, roots, opts)
    if not plan.videos and not plan.test_counts and not plan.masks:  # an empty download would "succeed" silently
        raise UserError(f"no {dataset} videos found under {', '.join(str(r) for r in roots)}: is --src the official "
                        f"download, and complete?")
    check_unique(plan.videos)
    if opts.labels is not None and not PLANNERS.info(dataset).get("user_labels"):
        path = opts.labels
        plan.label_sources.insert(0, LabelSource(path.name, lambda names, counts: dict(
            zip(names, read_label_file(path, names, counts))), convention=""))
    return plan


# --- archives --------------------------------------------------------------------------------------------------

def _is_archive(path: Path) -> bool:
    return path.is_file() and any(path.name.lower().endswith(s) for s in ARCHIVE_SUFFIXES)


@dataclass
class Archive:
    """A tar or zip source: the members to extract, their uncompressed size, and how to extract them."""
    path: Path
    names: list[str]
    size: int
    extract: Callable[[Path], None]


_DAMAGED = "the download is incomplete or damaged: download it again"


def _damaged(path: Path, exc: BaseException) -> UserError:
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return UserError(f"cannot read archive {path} ({reason}): {_DAMAGED}")


def _unsafe(path: Path, member: str, why: str) -> UserError:
    return UserError(f"archive {path} has a member {member!r} that {why}: nothing was extracted; the archive is not "
                     f"an official download or is damaged (extract what you trust yourself and pass the folder)")


def _escapes(name: str) -> str | None:
    """Why a member name would be written outside the extraction folder, or None (tar and zip alike)."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or re.match(r"[A-Za-z]:", posix):
        return "has an absolute path"
    if ".." in posix.split("/"):
        return "climbs out of the extraction folder ('..')"
    return None


def _check_tar_member(path: Path, member: tarfile.TarInfo, into: Path) -> None:
    """Refuse, naming it, a member that Python's 'data' filter would refuse in the middle of extracting (a path or a
    link leading out, a device or pipe), and an absolute name, which that filter would quietly make relative."""
    why = _escapes(member.name)
    if why is not None:
        raise _unsafe(path, member.name, why)
    try:
        tarfile.data_filter(member, str(into))
    except tarfile.FilterError as exc:
        reason = {tarfile.OutsideDestinationError: "would be written outside the extraction folder",
                  tarfile.AbsoluteLinkError: f"is a link with an absolute target ({member.linkname!r})",
                  tarfile.LinkOutsideDestinationError: f"is a link pointing out of the extraction folder (to "
                                                       f"{member.linkname!r})",
                  tarfile.SpecialFileError: "is a device or pipe, not a file",
                  tarfile.AbsolutePathError: "has an absolute path"}.get(type(exc), str(exc))
        raise _unsafe(path, member.name, reason) from None


def _check_zip_member(path: Path, info: zipfile.ZipInfo) -> None:
    """zipfile quietly rewrites a name leading out ('../x' becomes 'x') and writes a link as a small text file
    holding its target: both refused, naming the member, rather than extracted as something else."""
    why = _escapes(info.filename)
    if why is not None:
        raise _unsafe(path, info.filename, why)
    if stat.S_ISLNK(info.external_attr >> 16):
        raise _unsafe(path, info.filename, "is a symbolic link, which zip extraction cannot recreate")


def open_archive(path: Path, keep: Callable[[str], bool], into: Path) -> Archive:
    """The members of a tar or zip archive that ``keep`` selects, every one checked before anything is extracted
    (into ``into``); a damaged archive or an unsafe member is one UserError line naming the archive (and member)."""
    try:
        if path.name.lower().endswith(".zip"):
            archive = zipfile.ZipFile(path)
            infos = [i for i in archive.infolist() if keep(i.filename)]
            for info in infos:
                _check_zip_member(path, info)
            return Archive(path, [i.filename for i in infos], sum(i.file_size for i in infos),
                           lambda folder: archive.extractall(folder, members=infos))
        tar = tarfile.open(path)
        members = [m for m in tar.getmembers() if keep(m.name)]
        for member in members:
            _check_tar_member(path, member, into)
        return Archive(path, [m.name for m in members], sum(m.size for m in members),
                       lambda folder: tar.extractall(folder, members=members, filter="data"))
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise _damaged(path, exc) from None
    except OSError as exc:
        if is_write_error(exc):  # reading only: a refused permission or a file gone
            raise UserError(f"cannot read archive {path} ({exc.strerror or exc}): check it is there and readable") \
                from None
        raise _damaged(path, exc) from None


def _refuse_prepared_archive(src: Path, names: Sequence[str], dataset: str) -> None:
    """An archive of a tree already in the prepared layout (the public ped2.tar.gz) needs extracting, not preparing."""
    for name in names:
        match = re.fullmatch(r"(?:\./)?(?:(.+)/)?training/frames/[^/]+/[^/]+", name.replace("\\", "/"))
        if match and Path(name).suffix.lower() in FRAME_EXTENSIONS:
            tree = match.group(1)
            where = (f"extract it and point --data_root at the folder holding {tree}/" if tree else
                     f"extract it into <folder>/{dataset}/ and point --data_root at <folder>")
            raise UserError(f"--src {src} holds a tree already in the prepared layout ({tree or '.'}/training/frames/"
                            f"<video>/<frame>): such a tree needs no preparation: {where}")


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
            _extract(src, dataset, target, stamp)
        roots.append(target)
        staged.append(target)
    return roots, staged


def _extract(src: Path, dataset: str, target: Path, stamp: str) -> None:
    """Extract the archive ``src`` into ``target`` through ``<target>.partial``: every member is checked first, and
    whatever fails (an unsafe member, a damaged archive, a full disk, Ctrl-C) leaves no partial folder behind."""
    partial = target.with_name(target.name + ".partial")
    keep = PLANNERS.info(dataset).get("archive_members", lambda name: True)
    archive = open_archive(src, keep, partial)
    _refuse_prepared_archive(src, archive.names, dataset)
    required = int(archive.size * 1.02) + min(SPACE_MARGIN_BYTES, archive.size // 4)
    if required > free_bytes(target.parent):
        raise UserError(f"extracting {src} needs about {_human(required)} (its {_human(archive.size)} with a margin) "
                        f"but {target.parent} has only {_human(free_bytes(target.parent))} free: extract it yourself "
                        f"elsewhere and pass the folder, or free some space")
    print(f"extracting {src} ({_human(archive.size)}) into {target}", file=sys.stderr)
    try:
        shutil.rmtree(target, ignore_errors=True)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        archive.extract(partial)
        (partial / ".complete").write_text(stamp)
        os.replace(partial, target)
    except BaseException as exc:
        shutil.rmtree(partial, ignore_errors=True)  # first: the free space the message gives counts its room
        error = exc
        if is_write_error(exc):
            error = write_failed(target, exc, "extract it yourself elsewhere and pass the folder, or choose another "
                                 "--data_root", "extracted archive")
        elif isinstance(exc, (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError)):
            error = _damaged(src, exc)
        remove_empty_folders(target.parent, stop=target.parents[2])
        if error is exc:
            raise
        raise error from None


def remove_empty_folders(folder: Path, stop: Path) -> None:
    """Remove ``folder`` and its parents up to (not including) ``stop`` while they are empty (best effort)."""
    folder, stop = Path(folder), Path(stop)
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


# --- writing one video ------------------------------------------------------------------------------------------

def _digits(dataset: str, count: int) -> int:
    return max(PLANNERS.info(dataset).get("frame_digits", 3), len(str(max(count - 1, 0))))


def _fingerprint(job: VideoJob, opts: Options) -> dict:
    """What identifies a finished video: the source's size (not its path or mtime, which moving or re-extracting
    a download changes) and the output format."""
    files = job.frames if job.frames is not None else (job.source,)
    return {"source_files": len(files), "source_bytes": sum(p.stat().st_size for p in files),
            "format": "copy" if job.link else opts.image_format,
            "quality": opts.jpeg_quality if opts.image_format == "jpg" else None}


def _count_frames(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS and is_visible(p))


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
            yield read_image(path)  # a truncated JPEG is an error naming it, not a frame with a grey bottom
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
            _place_file(path, folder / frame_file_name(t, digits, "jpg"), opts.link)
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
        write_image(folder / frame_file_name(count, digits, opts.image_format), image, opts.image_format,
                    opts.jpeg_quality)
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
    try:
        partial.mkdir(parents=True)
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
    except BaseException as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if is_write_error(exc):
            raise write_failed(final, exc, DATA_ROOT_FIX, f"{job.split} video") from None
        raise
    return VideoResult(job, count, "written")


# --- writing one video's pixel masks -----------------------------------------------------------------------------

def prepare_mask(job: MaskJob, dataset: str, opts: Options, stop: threading.Event) -> str:
    """Write ``pixel_masks/<name>.npy`` (uint8 {0, 1}, (T, H, W)) atomically; 'done' when already there."""
    path = pixel_mask_path(opts.data_root, dataset, job.name)
    if path.exists():
        try:
            existing = load_npy(path, "pixel mask", "it is written again", mmap=True)
            if existing.dtype == np.uint8 and existing.ndim == 3 and existing.shape[0] == job.frames:
                return "done"
        except UserError:  # unreadable: written again below
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
        try:
            tmp.parent.mkdir(parents=True, exist_ok=True)
            tmp.unlink(missing_ok=True)
            _place_file(job.source, tmp, "copy" if opts.link == "symlink" else opts.link)
            os.replace(tmp, path)
        except BaseException as exc:  # a copy cut short by a full disk: no half file under either name
            _remove_quietly(tmp)
            if is_write_error(exc):
                raise write_failed(path, exc, DATA_ROOT_FIX, "pixel mask") from None
            raise
        return "linked"
    # Streamed one mask at a time, with plain writes: a memory-mapped output (open_memmap) is a sparse file whose
    # pages are allocated when touched, so a full disk would kill the process with SIGBUS instead of an OSError.
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
              "shape": (job.frames, height, width)}
    with atomic_path(path, suffix=".npy", fix=DATA_ROOT_FIX, what="pixel mask") as tmp:
        with open(tmp, "wb") as handle:
            np.lib.format.write_array_header_1_0(handle, header)
            for t in range(job.frames):
                if stop.is_set():
                    raise KeyboardInterrupt
                frame = np.asarray(masks[t])
                if frame.shape != (height, width):
                    raise UserError(f"{job.source}: mask {t} is {frame.shape[1]}x{frame.shape[0]}, the first is "
                                    f"{width}x{height}")
                handle.write((frame > 0).astype(np.uint8).tobytes())
    return "written"


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:  # the folder went away or became read-only: nothing left to remove
        pass


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
    progress bar.  A UserError of one job does not stop the others; they are all reported at the end.  A failed
    write (:class:`errors.WriteFailed`: a full disk, a read-only folder) would fail every other job the same way, so
    it stops them all and is the one line reported; so does Ctrl-C (or any other exception), at each job's next
    frame.  Finished jobs stay finished."""
    stop = threading.Event()
    results, failures = [], []
    write_failure: list[WriteFailed] = []

    def guarded(job):
        # A job that fails other than by a UserError (Ctrl-C) or by a failed write sets `stop` itself, at once:
        # waiting for the main thread to see it let the next queued job start and finish meanwhile on a busy machine.
        try:
            return work(job, stop)
        except WriteFailed:
            stop.set()
            raise
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
                except WriteFailed as exc:
                    write_failure.append(exc)
                    break
                except UserError as exc:
                    failures.append(str(exc))
                bar.update(1)
    except BaseException:
        stop.set()
        for future in futures:
            future.cancel()
        raise
    finally:
        if write_failure:  # the others stop at their next frame (they raise KeyboardInterrupt: not reported)
            stop.set()
            for future in futures:
                future.cancel()
        pool.shutdown(wait=True)
    if write_failure:
        exc = write_failure[0]
        raise WriteFailed(f"{exc} (finished videos are kept: run the same command again to continue)", exc.errno,
                          exc.reason)
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


SPACE_MARGIN_BYTES = 64 * 2**20  # at most this much room kept beyond the estimate (a quarter of it for small jobs)


def check_space(videos: Sequence[VideoJob], masks: Sequence[MaskJob], opts: Options) -> int:
    """The bytes the remaining work needs; refused when the estimate, with a margin for its error, exceeds the free
    space.  The message states the figure compared, margin included, so it never refuses with more free than it
    says it needs."""
    need = estimate_bytes(videos, masks, opts)
    required = need + min(SPACE_MARGIN_BYTES, need // 4)  # the estimate samples a few videos: keep room for error
    free = free_bytes(opts.data_root)
    if required > free:
        raise UserError(f"preparing needs about {_human(required)} at {opts.data_root} (an estimate from a sample "
                        f"of the videos, with a margin) but only {_human(free)} is free: free some space or choose "
                        f"another --data_root (finished videos are kept and not redone)")
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
        published = PLANNERS.info(self.dataset).get("published", {})
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
    return sorted(names, key=natural_key)


def _stray_folders(plan: Plan, opts: Options) -> None:
    """A video folder in the output that the source does not have would silently join the dataset: refuse."""
    for split in SPLITS:
        folder = Path(opts.data_root) / plan.dataset / split / "frames"
        planned = {j.name for j in plan.videos if j.split == split}
        if not folder.is_dir() or (opts.labels_only and not planned):
            continue
        for entry in folder.iterdir():
            if entry.is_dir() and is_visible(entry) and entry.name not in planned and planned:
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
    if PLANNERS.info(plan.dataset).get("user_labels") and normal:  # a misspelt name in labels.csv looks like this
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


def _list_videos(folder: Path) -> list:
    """The videos of a prepared split as the loader lists them (dataset.list_videos)."""
    from ffpvad.data.dataset import list_videos  # deferred: dataset imports torch, which preparing never needs

    return list_videos(folder)


def _test_names_and_counts(plan: Plan, opts: Options) -> tuple[list[str], list[int]]:
    """The test videos in loader order with their frame counts: the prepared frames when there are any."""
    folder = Path(opts.data_root) / plan.dataset / "testing" / "frames"
    if folder.is_dir() and any(is_visible(p) for p in folder.iterdir()):
        videos = _list_videos(folder)
        names, counts = [v.name for v in videos], [len(v.frames) for v in videos]
        for name, count in zip(names, counts):
            if plan.test_counts.get(name, count) != count:
                raise UserError(f"{folder / name} has {count} frames but the source's test video has "
                                f"{plan.test_counts[name]}: prepare the frames again (without --labels_only)")
        return names, counts
    names = _test_order(plan.test_counts)
    return names, [plan.test_counts[n] for n in names]


def prepared_tree(folder: Path) -> Path | None:
    """The ``<dataset>`` folder of a tree already in the prepared layout, ``folder`` itself or one just below it.

    Prepared means ``training/frames/<video>/`` folders of frames (the public ``ped2.tar.gz`` and what this tool
    writes), or a ``testing/frames/<video>/`` folder holding this tool's manifest.  ShanghaiTech's official
    ``testing/frames/`` alone is not: its training videos are ``training/videos/*.avi``.
    """
    def prepared(tree: Path) -> bool:
        if any((video / MANIFEST).is_file() for split in SPLITS for video in subdirs(tree / split / "frames", r".+")):
            return True
        return any(is_frame(p) for video in subdirs(tree / "training" / "frames", r".+") for p in video.iterdir())

    if not folder.is_dir():
        return None
    return next((tree for tree in [folder, *subdirs(folder, r".+")] if prepared(tree)), None)


def check_sources(sources: Sequence[Path], dataset: str, data_root: Path) -> None:
    """The source is only ever read: the output is neither inside a source nor holds one, and a source already in
    the prepared layout needs no preparation (one UserError line each)."""
    output = Path(data_root).resolve()
    for given in sources:
        src = Path(given).resolve()
        if src == output / dataset or output / dataset in src.parents:
            raise UserError(f"--src {src} is inside the output {Path(data_root) / dataset}: prepare into another "
                            f"--data_root (the source is never modified)")
        if src == output or src in output.parents:
            raise UserError(f"--data_root {data_root} is inside --src {given}: choose a --data_root outside the "
                            f"source (the source is only ever read)")
        tree = prepared_tree(src)
        if tree is not None:
            raise UserError(f"--src {given} is already in the prepared layout ({tree}/<split>/frames/<video>/"
                            f"<frame>): such a tree needs no preparation: point --data_root at {tree.parent} "
                            f"(train.py / eval.py --data_root={tree.parent})")


def check_data_root(data_root: Path) -> None:
    """A --data_root that is a file, or a dataset's own folder (``data/ped2``: the output would become
    ``data/ped2/ped2/``, which nothing reads), is one UserError line."""
    if data_root.exists() and not data_root.is_dir():
        raise UserError(f"--data_root {data_root} is a file, not a folder: {DATA_ROOT_FIX}")
    if any((data_root / split / "frames").is_dir() for split in SPLITS):
        raise UserError(f"--data_root {data_root} is a dataset's folder (it holds training/ or testing/ frames): "
                        f"give the folder above it, --data_root {data_root.parent}")


def prepare(dataset: str, sources: Sequence[Path], opts: Options) -> Summary:
    """Prepare ``dataset`` from the downloaded ``sources`` into ``opts.data_root`` (see the module docstring)."""
    dataset = dataset_name(dataset)
    if not sources:
        raise UserError("no --src given: pass the downloaded folder or archive")
    data_root = Path(opts.data_root)
    check_sources(sources, dataset, data_root)
    check_data_root(data_root)
    created = not data_root.exists()
    staging = data_root / ".prepare" / dataset
    try:
        # Proved writable first: a read-only or refused --data_root is this one line, not "no space" or a traceback
        # after the archive was read.
        ensure_writable_dir(data_root, "--data_root", DATA_ROOT_FIX)
        roots, staged = stage_sources(sources, dataset, staging)
        if staged and opts.link == "symlink":
            raise UserError("--link=symlink cannot be used with an archive source (the extracted files are removed "
                            "at the end): use --link=auto or copy")
        plan = make_plan(dataset, roots, opts)
    except BaseException:
        # Nothing is prepared yet.  An extracted copy of an archive that is not what was expected (no videos, the
        # wrong download) is of no use to the next run, and would fill the disk without a word: removed.
        if not opts.keep_extracted:
            shutil.rmtree(staging, ignore_errors=True)
        remove_empty_folders(staging.parent, stop=data_root)
        if created:
            remove_empty_folders(data_root, stop=data_root.parent)
        raise
    summary = Summary(dataset, data_root, notes=list(plan.notes))
    videos = [] if opts.labels_only else plan.videos
    try:
        _stray_folders(plan, opts)
        todo = [j for j in videos
                if video_state(j, data_root / dataset / j.split / "frames", opts) == "todo"]
        masks_todo = [m for m in plan.masks if not pixel_mask_path(data_root, dataset, m.name).exists()]
        need = check_space(todo, masks_todo, opts)
    except UserError:
        if created:  # refused before writing: the --data_root this run created goes too
            remove_empty_folders(data_root, stop=data_root.parent)
        raise
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
        if folder.is_dir() and any(is_visible(p) for p in folder.iterdir()):
            listed = _list_videos(folder)  # what train.py / eval.py will see
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
