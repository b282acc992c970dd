"""Streaming frame sources for detect.py: a video file, a folder of frames, a camera (ffpvad/detection/video_out.py writes).

Frames are read one at a time and never collected, so a two-hour video costs the memory of a few frames.  Every
source yields BGR uint8 (H, W, 3) frames as OpenCV decodes them (grey images and videos come out with three equal
channels).  Bad input is a :class:`errors.UserError` naming it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import cv2
import numpy as np

from ffpvad.errors import UserError
from ffpvad.data.frames import FRAME_EXTENSIONS, is_frame, natural_key

DEFAULT_FOLDER_FPS = 25.0  # a folder of frames has no frame rate: this one unless --fps says otherwise


@dataclass
class FrameSource:
    """One opened source: ``kind`` is file, folder or camera; ``n_frames`` is None when unknown (cameras)."""
    spec: str
    kind: str
    name: str  # used to name the results folder
    fps: float
    n_frames: Optional[int]
    width: int
    height: int
    _files: Optional[list[Path]] = None
    _first: Optional[np.ndarray] = None
    _capture: Optional[cv2.VideoCapture] = None

    def frames(self) -> Iterator[np.ndarray]:
        """The frames in order (a file or folder can be iterated again: it is re-opened)."""
        if self.kind == "folder":
            first_path, first_shape = None, None
            for path in self._files:
                image = read_image(path)
                if first_path is None:
                    first_path, first_shape = path, image.shape[:2]
                elif image.shape[:2] != first_shape:
                    raise frame_size_error(Path(self.spec), first_path, first_shape, path, image.shape[:2])
                yield image
            return
        capture, first = self._capture, self._first
        self._capture, self._first = None, None
        if capture is None:  # second pass over a file
            capture = _open_capture(self.spec, self.kind)
            first = _read_first(capture, self.spec, self.kind)
        try:
            yield first
            while True:
                ok, frame = capture.read()
                if not ok or frame is None:
                    return
                yield _as_bgr(frame)
        finally:
            capture.release()

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


def _as_bgr(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    return frame


JPEG_START = b"\xff\xd8\xff"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_RE_EXTRACT = "re-extract the video's frames or remove the file"


def jpeg_is_complete(data: bytes) -> bool:
    """True when a JPEG's image data ends with the end-of-image marker (FF D9).

    libjpeg decodes a JPEG cut short without an error: it prints "Premature end of JPEG file" (no file name) and
    fills the missing rows with grey.  So the check is made here: the marker segments are walked to the first
    start-of-scan (skipping APPn segments, whose EXIF thumbnail has its own FF D9), and an FF D9 must follow it.
    Entropy-coded data never holds FF D9 (an FF there is followed by 00 or a restart marker), and bytes after the
    marker are allowed (some cameras and tools append a few).  A header that cannot be walked falls back to "an
    FF D9 after the last start-of-scan".
    """
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            break  # not a marker where one should be: fall back to the plain search
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xD9:  # an end of image before any scan
            return False
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xDA:  # start of scan: what follows is image data, then (progressive) more scans, then FF D9
            return data.find(b"\xff\xd9", i + 2 + length) >= 0
        i += 2 + length
    else:
        return False  # the headers run to the end of the file
    last_scan = data.rfind(b"\xff\xda")
    return last_scan >= 0 and data.find(b"\xff\xd9", last_scan + 2) >= 0


def png_is_complete(data: bytes) -> bool:
    """True when a PNG's chunks run whole up to its IEND chunk (what libpng needs; bytes after it are allowed).

    Checked before decoding so that a truncated PNG is named as such, without libpng's "Read Error" on stderr.
    """
    i, n = len(PNG_SIGNATURE), len(data)
    while i + 12 <= n:
        if data[i + 4:i + 8] == b"IEND":
            return True
        i += 12 + int.from_bytes(data[i:i + 4], "big")  # length, type, data, CRC
    return False


def write_image(path: Path, image: np.ndarray, image_format: str = "jpg", jpeg_quality: int = 95) -> None:
    """A frame file written by Python after encoding in memory: a failed write is an OSError with its errno (a full
    disk, a read-only folder), which the caller words in one line; cv2.imwrite would only return False."""
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if image_format == "jpg" else []
    ok, data = cv2.imencode(f".{image_format}", image, params)
    if not ok:
        raise UserError(f"OpenCV cannot encode frame {path.name} of {path.parent} as {image_format}")
    path.write_bytes(data.tobytes())


def read_image(path: Path) -> np.ndarray:
    """A frame file as BGR uint8 (H, W, 3) (grey images come out with three equal channels).

    Every bad file is a UserError naming it: unreadable, empty, not an image OpenCV decodes, or a JPEG or PNG cut
    short (a truncated JPEG would otherwise decode to a half-grey frame with only a libjpeg warning on stderr).
    The file is read once and decoded from memory.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read frame {path} ({exc.strerror or exc}): fix the file's permissions or "
                        f"{_RE_EXTRACT}") from None
    if not data:
        raise UserError(f"cannot read frame {path}: the file is empty (0 bytes); {_RE_EXTRACT}")
    if data.startswith(JPEG_START) and not jpeg_is_complete(data):
        raise UserError(f"frame {path} is truncated (no JPEG end marker): {_RE_EXTRACT}")
    if data.startswith(PNG_SIGNATURE) and not png_is_complete(data):
        raise UserError(f"frame {path} is truncated or damaged (no PNG end chunk): {_RE_EXTRACT}")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise UserError(f"cannot read frame {path}: the file is empty or not an image OpenCV decodes (damaged, or "
                        f"another format under an image extension); {_RE_EXTRACT}")
    return _as_bgr(image)


def frame_size_error(folder: Path, first: Path, first_shape: tuple[int, ...], other: Path,
                     other_shape: tuple[int, ...]) -> UserError:
    """The error for a video whose frames are not all of one size (shapes are (H, W, ...))."""
    return UserError(f"video folder {folder} has frames of two sizes: {first.name} is {first_shape[1]}x"
                     f"{first_shape[0]} but {other.name} (the first of the other size) is {other_shape[1]}x"
                     f"{other_shape[0]}: re-extract the video's frames at one size")


def frame_files(folder: Path) -> list[Path]:
    """The frame files of ``folder`` (images by extension, not hidden) in natural order.

    A frame name that is a broken symbolic link, a link loop or a folder is a UserError (it would otherwise be
    skipped or fail with a traceback); other sub-folders are not frames.
    """
    try:
        entries = list(folder.iterdir())
    except OSError as exc:
        raise UserError(f"cannot list folder {folder} ({exc.strerror or exc}): check its permissions") from None
    files = []
    for path in entries:
        if not is_frame(path):
            continue
        if path.is_file():
            files.append(path)
        elif path.is_dir():  # skipped, it would leave a gap in the frames that shifts every label after it
            raise UserError(f"frame {path} is a folder, not an image file: remove it, or re-extract the video's "
                            f"frames")
        elif path.is_symlink():
            raise UserError(f"frame {path} is a broken symbolic link (its target is missing, or the link points "
                            f"back to itself): fix or remove the link")
        else:  # a pipe would block the reader forever; a device or socket is no image either
            raise UserError(f"frame {path} is not a regular file (a pipe, device or socket): remove it")
    return sorted(files, key=natural_key)


def _open_capture(spec: str, kind: str) -> cv2.VideoCapture:
    capture = cv2.VideoCapture(int(spec)) if kind == "camera" else cv2.VideoCapture(spec)
    if not capture.isOpened():
        capture.release()
        if kind == "camera":
            raise UserError(f"cannot open camera {spec}: no camera with this index (or it is in use)")
        raise UserError(f"cannot open video {spec}: OpenCV cannot decode it (not a video, or a format it lacks)")
    return capture


def _read_first(capture: cv2.VideoCapture, spec: str, kind: str) -> np.ndarray:
    ok, frame = capture.read()
    if not ok or frame is None:
        capture.release()
        what = f"camera {spec} gave no frame" if kind == "camera" else f"video {spec} has no frames OpenCV can decode"
        raise UserError(f"{what} (empty or corrupt)")
    return _as_bgr(frame)


def _no_frames_error(path: Path) -> UserError:
    """A folder given as ``--video`` without frames, with what it holds instead (a dataset's folder of videos?)."""
    entries = sorted((p for p in path.iterdir() if not p.name.startswith(".")), key=natural_key)
    folders = [p.name for p in entries if p.is_dir()]
    files = [p.name for p in entries if not p.is_dir()]

    def some(names: list[str]) -> str:
        return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")

    head = f"folder {path} has no frames ({', '.join(FRAME_EXTENSIONS)})"
    if folders and not files:
        return UserError(f"{head} but {len(folders)} sub-folder(s) ({some(folders)}): pass one video's folder of "
                         f"frames, a video file or a camera index")
    holds = f", only {len(files)} other file(s) ({some(files)})" if files else ", it is empty"
    return UserError(f"{head}{holds}: give a folder of images, a video file or a camera index")


def open_source(spec: str, fps: float = 0.0) -> FrameSource:
    """A video file, a folder of frames (natural name order) or a camera index; ``fps`` > 0 overrides the rate."""
    path = Path(spec)
    if spec.isdigit() and not path.exists():
        capture = _open_capture(spec, "camera")
        first = _read_first(capture, spec, "camera")
        rate = fps or capture.get(cv2.CAP_PROP_FPS) or DEFAULT_FOLDER_FPS
        return FrameSource(spec, "camera", f"camera{spec}", float(rate), None, first.shape[1], first.shape[0],
                           _first=first, _capture=capture)
    if path.is_dir():
        files = frame_files(path)
        if not files:
            raise _no_frames_error(path)
        first = read_image(files[0])
        return FrameSource(spec, "folder", path.resolve().name, float(fps or DEFAULT_FOLDER_FPS), len(files),
                           first.shape[1], first.shape[0], _files=files)
    if path.is_file():
        if path.stat().st_size == 0:
            raise UserError(f"video {path} is empty (0 bytes)")
        capture = _open_capture(spec, "file")
        first = _read_first(capture, spec, "file")
        rate = capture.get(cv2.CAP_PROP_FPS)
        rate = fps or (rate if 0 < rate < 1000 else DEFAULT_FOLDER_FPS)
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        return FrameSource(spec, "file", path.stem, float(rate), count if count > 0 else None,
                           first.shape[1], first.shape[0], _first=first, _capture=capture)
    raise UserError(f"--video={spec}: no such file or folder (give a video file, a folder of frames or a camera "
                    f"index such as 0)")


def count_frames(path: Path | str) -> int:
    """Frames OpenCV decodes from a video file (by reading them: container counts can be wrong)."""
    capture = cv2.VideoCapture(str(path))
    n = 0
    while capture.isOpened():
        ok, _ = capture.read()
        if not ok:
            break
        n += 1
    capture.release()
    return n
