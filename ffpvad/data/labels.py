"""Frame labels and pixel masks: every reader and writer, in one torch-free module.

Used by the dataset (``dataset.TestSet``), the evaluator and localization (pixel masks), detection (interval files)
and the preparation (``ffpvad/data/preparation/``).  It imports none of them.

Frame labels, 0/1 per frame of each test video (docs/data.md 'Label formats')::

    <ds>.mat                    ano_pred ``gt``: a 1 x n cell of (2, m) 1-based inclusive intervals
    frame_labels_<ds>.npy       MNAD: every video's labels concatenated, (1, N) or (N,)
    test_frame_mask/<v>.npy     ShanghaiTech: one 1-D 0/1 array per test video
    UCSDpedN.m                  official UCSD: ``TestVideoFile{end+1}.gt_frame = [a:b, c:d];`` per test video
    Test0NN_gt/                 official UCSD pixel masks (a frame is anomalous when any pixel is set)
    labels.csv / labels.txt     a user's intervals: ``video, first frame, last frame`` (0-based, inclusive)

Pixel masks, (T, H, W) per test video: the official UCSD ``Test0NN_gt/*.bmp`` folders, Avenue ``<n>_label.mat``
(``volLabel``), ShanghaiTech ``test_pixel_mask/<v>.npy``, and the prepared layout
``<data_root>/<ds>/testing/pixel_masks/<v>.npy`` (uint8 {0, 1}, written by ``tools/prepare_data.py``).

Every reader checks lengths against the frame counts and names the file that disagrees; a ``.npy`` is never
unpickled, and an unreadable one is a :class:`errors.UserError` naming the file and what to do.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import BinaryIO, Sequence

import cv2
import numpy as np

from ffpvad.config import Config
from ffpvad.errors import UserError
from ffpvad.data.frames import natural_key, numbered_files
from ffpvad.ioutil import atomic_path

PIXEL_MASKS = "pixel_masks"  # <data_root>/<dataset>/testing/pixel_masks/<video>.npy, uint8 (T, H, W) in {0, 1}
MASK_EXTENSIONS = (".bmp", ".png", ".tif", ".tiff")  # official UCSD Test0NN_gt masks (.bmp) and re-saved copies


# --- .npy files ---------------------------------------------------------------------------------------------------

def load_npy(path: Path, what: str, fix: str, mmap: bool = False) -> np.ndarray:
    """A numeric array from a ``.npy`` file, memory-mapped with ``mmap``; never unpickled.

    An empty, truncated, pickled (object) or non-numeric file is one UserError line: ``cannot read <what> <path> as
    .npy (<why>): <fix>``.
    """
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except EOFError:
        reason = "the file is empty"
    except (ValueError, OSError) as exc:
        text = " ".join(str(exc).split())
        pickled = "pickle" in text or "object" in text.lower()
        reason = "it holds pickled Python objects, not a numeric array" if pickled else text
    else:
        if not isinstance(array, np.ndarray):  # np.load returns an NpzFile for a .npz archive
            array.close()
            reason = "it is a .npz archive, not one .npy array"
        elif array.dtype.kind not in "biuf":
            reason = f"it holds {array.dtype} values, not numbers"
        else:
            return array
    raise UserError(f"cannot read {what} {path} as .npy ({reason}): {fix}")


def save_npy(handle: BinaryIO, array: np.ndarray) -> None:
    """``np.save`` through Python's own writes.  For a real file np.save calls ``ndarray.tofile``, whose failure on a
    full disk is an OSError without an errno ("491520 requested and 57216 written"), which no caller can word; a
    Python write fails with ENOSPC, which :func:`ioutil.atomic_path` turns into one line."""
    array = np.asarray(array)
    array = array if array.flags.c_contiguous else array.copy(order="C")
    np.lib.format.write_array_header_1_0(handle, np.lib.format.header_data_from_array_1_0(array))
    handle.write(memoryview(array.reshape(-1)).cast("B"))


# --- frame labels -------------------------------------------------------------------------------------------------

def _zero_one(path: Path, array: np.ndarray) -> np.ndarray:
    """0/1 frame labels as int64; any other value (255 from a mask saved as an image, 0.5, NaN, -1) is a UserError:
    cast to integers it would quietly become a label the metrics read as a third class or as anomalous."""
    flat = np.asarray(array).reshape(-1)
    bad = ~np.isin(flat, (0, 1))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise UserError(f"{path} holds the value {flat[first]!r} at position {first} ({int(bad.sum())} values "
                        f"in all that are neither 0 nor 1): frame labels are 0 (normal) or 1 (anomalous); fix or "
                        f"replace the file")
    return flat.astype(np.int64)


def _check_count(kind: str, path: Path, got: int, want: int) -> None:
    if got != want:
        raise UserError(f"{path} has {kind} for {got} test videos but the dataset has {want}: "
                        f"check --labels and --data_root")


def labels_from_ano_pred_mat(path: Path, counts: Sequence[int]) -> list[np.ndarray]:
    """ano_pred ``gt``: a 1 x n cell of [2 x m] 1-based inclusive anomalous intervals."""
    import scipy.io  # deferred: 0.2 s, and only .mat labels need it

    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:  # scipy raises several types for a corrupt file
        raise UserError(f"cannot read label file {path} as MATLAB .mat ({exc})") from None
    if "gt" not in mat:
        keys = ", ".join(k for k in mat if not k.startswith("__"))
        raise UserError(f"{path} has no variable 'gt' (found: {keys}): expected the ano_pred interval format")
    cells = np.asarray(mat["gt"]).reshape(-1)
    _check_count("intervals", path, len(cells), len(counts))
    labels = []
    for k, (cell, n) in enumerate(zip(cells, counts)):
        intervals = np.asarray(cell, dtype=np.int64).reshape(2, -1)
        video = np.zeros(n, dtype=np.int64)
        for start, end in intervals.T:
            if not 1 <= start <= end <= n:
                raise UserError(f"{path}: test video {k + 1} has interval [{start}, {end}] outside its {n} frames: "
                                f"the label file does not match these frames")
            video[start - 1:end] = 1
        labels.append(video)
    return labels


def labels_from_concatenated_npy(path: Path, counts: Sequence[int]) -> list[np.ndarray]:
    """MNAD ``frame_labels_<ds>.npy``: all videos' 0/1 labels in one array, (1, N) or (N,)."""
    flat = load_npy(path, "label file", "expected MNAD's frame_labels_<dataset>.npy; replace the file")
    flat = _zero_one(path, flat)
    if len(flat) != sum(counts):
        raise UserError(f"{path} has {len(flat)} frame labels but the {len(counts)} test videos have "
                        f"{sum(counts)} frames: the label file does not match these frames")
    return np.split(flat, np.cumsum(counts)[:-1])


def labels_from_mask_folder(folder: Path, names: Sequence[str], counts: Sequence[int]) -> list[np.ndarray]:
    """ShanghaiTech ``test_frame_mask/<video>.npy``: one 0/1 array per test video."""
    labels = []
    for name, n in zip(names, counts):
        path = folder / f"{name}.npy"
        if not path.exists():
            raise UserError(f"no frame mask {path} for test video {name}: the mask folder does not match the frames")
        video = load_npy(path, "frame mask", "replace it with the official testing/test_frame_mask file, or "
                                             "prepare the dataset again with tools/prepare_data.py")
        video = _zero_one(path, video)
        if len(video) != n:
            raise UserError(f"{path} has {len(video)} labels but test video {name} has {n} frames")
        labels.append(video)
    return labels


_UCSD_LINE = re.compile(r"gt_frame\s*=\s*\[([^\]]*)\]")


def labels_from_ucsd_m(path: Path, counts: Sequence[int]) -> list[np.ndarray]:
    """Official UCSD ``UCSDpedN.m``: ``TestVideoFile{end+1}.gt_frame = [a:b, c:d];`` per test video."""
    entries = _UCSD_LINE.findall(path.read_text(errors="replace"))
    _check_count("gt_frame lines", path, len(entries), len(counts))
    labels = []
    for k, (entry, n) in enumerate(zip(entries, counts)):
        video = np.zeros(n, dtype=np.int64)
        for start, end in re.findall(r"(\d+)\s*:\s*(\d+)", entry):
            start, end = int(start), int(end)
            if not 1 <= start <= end <= n:
                raise UserError(f"{path}: test video {k + 1} has range {start}:{end} outside its {n} frames")
            video[start - 1:end] = 1
        labels.append(video)
    return labels


def labels_from_ucsd_gt_masks(test_dir: Path, counts: Sequence[int]) -> list[np.ndarray]:
    """Official UCSD pixel masks ``Test0NN_gt/*.bmp``: a frame is anomalous when its mask has a non-zero pixel."""
    folders = ucsd_gt_folders(test_dir)
    _check_count("mask folders", test_dir, len(folders), len(counts))
    labels = []
    for folder, n in zip(folders, counts):
        masks = read_ucsd_gt_mask_folder(folder)
        if len(masks) != n:
            raise UserError(f"{folder} has {len(masks)} masks but its test video has {n} frames")
        labels.append(frame_labels_from_masks(masks))
    return labels


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


def load_labels(source: Path, names: Sequence[str], counts: Sequence[int]) -> list[np.ndarray]:
    """Per-video 0/1 frame labels from any supported format, checked against the frame counts."""
    if source.is_dir():
        return labels_from_mask_folder(source, names, counts)
    loaders = {".mat": labels_from_ano_pred_mat, ".npy": labels_from_concatenated_npy, ".m": labels_from_ucsd_m}
    loader = loaders.get(source.suffix.lower())
    if loader is None:
        raise UserError(f"unknown label format {source}: expected an ano_pred .mat, a frame_labels .npy, "
                        f"a UCSD .m or a folder of per-video .npy masks")
    return loader(source, counts)


def read_label_file(path: Path, names: Sequence[str], counts: Sequence[int]) -> list[np.ndarray]:
    """Any label file a user may give: interval text/CSV, or what :func:`load_labels` reads (.mat, .npy, .m)."""
    if not path.exists():
        raise UserError(f"label file {path} does not exist")
    if path.suffix.lower() in (".csv", ".txt"):
        return labels_from_intervals(path, read_interval_file(path), names, counts)
    return load_labels(path, names, counts)


def label_candidates(cfg: Config) -> list[Path]:
    """Where the labels of ``cfg.dataset`` are looked for when ``--labels`` is not given, in order."""
    root, ds = Path(cfg.data_root), cfg.dataset
    names = [ds, "shanghaitech"] if ds == "shanghai" else [ds]
    out = []
    for name in names:
        out += [root / ds / f"{name}.mat", root / f"{name}.mat", root / "labels" / f"{name}.mat"]
    out += [root / ds / "testing" / "test_frame_mask", root / "labels" / "shanghaitech_test_frame_mask"] \
        if ds == "shanghai" else []
    out += [root / ds / f"frame_labels_{ds}.npy", root / f"frame_labels_{ds}.npy",
            root / "labels" / f"frame_labels_{ds}.npy"]
    return out


def find_label_source(cfg: Config) -> Path:
    """``--labels`` when given (it must exist), else the first of :func:`label_candidates` that exists."""
    if cfg.labels:
        path = Path(cfg.labels)
        _refuse_broken_link(path)
        if not path.exists():
            raise UserError(f"label file {path} does not exist (from --labels)")
        return path
    for path in label_candidates(cfg):
        _refuse_broken_link(path)  # skipped, the search would quietly go on to another file's labels
        if path.exists():
            return path
    looked = ", ".join(str(p) for p in label_candidates(cfg))
    raise UserError(f"no labels found for {cfg.dataset} (looked for {looked}): pass --labels=<file or folder>")


def _refuse_broken_link(path: Path) -> None:
    if path.is_symlink() and not path.exists():
        raise UserError(f"label file {path} is a broken symbolic link (its target is missing, or the link points "
                        f"back to itself): fix or remove the link")


# --- pixel masks --------------------------------------------------------------------------------------------------

def ucsd_gt_folders(test_dir: Path) -> list[Path]:
    """The official UCSD ``Test0NN_gt`` mask folders of a ``Test`` folder, in video order."""
    return sorted((p for p in test_dir.iterdir() if p.is_dir() and re.fullmatch(r"Test\d+_gt", p.name)),
                  key=natural_key)


def read_ucsd_gt_mask_folder(folder: Path) -> np.ndarray:
    """Official UCSD pixel masks ``Test0NN_gt/*.bmp`` as bool (T, H, W), in frame order.

    Handles the release's naming quirk (``Test006_gt``, ``Test009_gt`` and ``Test012_gt`` of Ped2 name their masks
    ``frame001.bmp`` ..., the others ``001.bmp`` ...) and skips ``._*`` / ``.DS_Store`` files.  The masks are 8-bit
    {0, 255}; a pixel is anomalous when non-zero.
    """
    folder = Path(folder)
    masks = []
    for path in numbered_files(folder, MASK_EXTENSIONS):
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
    import scipy.io  # deferred: 0.2 s, and only .mat labels need it

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
    import scipy.io  # deferred: 0.2 s, and only .mat labels need it

    try:
        variables = {name: shape for name, shape, _ in scipy.io.whosmat(str(path))}
    except Exception as exc:
        raise UserError(f"cannot read {path} as MATLAB .mat ({exc}): expected the official Avenue "
                        f"testing_label_mask file") from None
    if "volLabel" not in variables:
        raise UserError(f"{path} has no variable 'volLabel' (found: {', '.join(variables) or 'nothing'}): "
                        f"expected the official Avenue ground_truth_demo/testing_label_mask/<n>_label.mat")
    return int(np.prod(variables["volLabel"]))


def read_npy_masks(path: Path, fix: str, mmap: bool = True) -> np.ndarray:
    """One video's pixel masks from a ``.npy`` file: (T, H, W), memory-mapped by default.  ``fix`` ends the error
    message of an unreadable or malformed file: what the user should do."""
    masks = load_npy(path, "pixel mask", fix, mmap=mmap)
    if masks.ndim != 3:
        raise UserError(f"pixel mask {path} has shape {masks.shape}, expected (frames, height, width): {fix}")
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
    again = f"prepare the dataset again ('python tools/prepare_data.py {dataset} ...')"
    masks = []
    for k, name in enumerate(names):
        path = pixel_mask_path(data_root, dataset, name)
        if not path.exists():
            raise UserError(f"no pixel mask {path} for test video {name}: the prepared masks do not match the "
                            f"test videos (Ped1 has pixel masks for only 10 of its 36 test videos)")
        mask = read_npy_masks(path, again, mmap=mmap)
        if mask.dtype != np.uint8:
            raise UserError(f"pixel mask {path} is {mask.dtype} {mask.shape}, expected uint8 (frames, height, "
                            f"width): {again}")
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


# --- writers ------------------------------------------------------------------------------------------------------

def intervals_of(labels: np.ndarray) -> np.ndarray:
    """0/1 frame labels -> (2, m) 1-based inclusive [start; end] intervals of the anomalous runs (ano_pred)."""
    padded = np.concatenate([[0], np.asarray(labels, dtype=np.int8) != 0, [0]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return np.stack([edges[0::2] + 1, edges[1::2]]).astype(np.int32).reshape(2, -1)


WRITE_FIX = "choose another --data_root"  # what to do when a label file cannot be written (errors.WriteFailed)


def write_ano_pred_mat(path: Path, labels: Sequence[np.ndarray], fix: str = WRITE_FIX) -> None:
    """The ano_pred ``gt`` format (:func:`labels_from_ano_pred_mat`): a 1 x n cell of (2, m) intervals.  Atomic; a
    failed write (full disk, read-only) is one :class:`errors.WriteFailed` line ending with ``fix``."""
    import scipy.io  # deferred: 0.2 s, and only .mat labels need it

    cells = np.empty((1, len(labels)), dtype=object)
    for k, video in enumerate(labels):
        cells[0, k] = intervals_of(video)
    with atomic_path(path, suffix=".mat", fix=fix, what="label file") as tmp:
        with open(tmp, "wb") as handle:  # a file object: savemat would append .mat to a path
            scipy.io.savemat(handle, {"gt": cells})


def write_frame_mask_folder(folder: Path, names: Sequence[str], labels: Sequence[np.ndarray],
                            fix: str = WRITE_FIX) -> None:
    """ShanghaiTech ``test_frame_mask/<video>.npy``: one 1-D uint8 0/1 array per test video, each written atomically
    (a failed write is one :class:`errors.WriteFailed` line ending with ``fix``)."""
    for name, video in zip(names, labels):
        with atomic_path(folder / f"{name}.npy", suffix=".npy", fix=fix, what="frame mask") as tmp:
            with open(tmp, "wb") as handle:
                save_npy(handle, np.asarray(video, dtype=np.uint8))
