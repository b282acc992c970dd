"""Streaming frame sources for detect.py (a video file, a folder of frames, a camera) and an atomic video writer.

Frames are read one at a time and never collected, so a two-hour video costs the memory of a few frames.  Every
source yields BGR uint8 (H, W, 3) frames as OpenCV decodes them (grey images and videos come out with three equal
channels).  Bad input is a :class:`errors.UserError` naming it.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import cv2
import numpy as np

from errors import UserError
from frames import FRAME_EXTENSIONS, is_frame, natural_key
from ioutil import atomic_path

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
            for path in self._files:
                yield read_image(path)
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


def read_image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise UserError(f"cannot read frame {path}: the file is empty or not an image")
    return image


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
        files = sorted((p for p in path.iterdir() if p.is_file() and is_frame(p)), key=natural_key)
        if not files:
            raise UserError(f"folder {path} has no frames ({', '.join(FRAME_EXTENSIONS)}): give a folder of images, "
                            f"a video file or a camera index")
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


class VideoWriter:
    """An mp4 (MPEG-4 Part 2, the codec every OpenCV build writes) that appears under its name only when complete."""

    def __init__(self, tmp: Path, final: Path, fps: float, size: tuple[int, int]):
        self.final, self.size = final, size
        self.writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), size)
        if not self.writer.isOpened():
            raise UserError(f"cannot write {final}: OpenCV could not open an mp4 writer there (folder not writable, "
                            f"or no MPEG-4 encoder in this OpenCV build)")
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        if frame.shape[1::-1] != self.size:
            raise ValueError(f"frame size {frame.shape[1::-1]} != video size {self.size}")
        self.writer.write(frame)
        self.frames += 1


@contextmanager
def atomic_video(path: Path, fps: float, size: tuple[int, int]) -> Iterator[VideoWriter]:
    """Write frames to a temporary file beside ``path``; rename it to ``path`` only when the block ends normally."""
    with atomic_path(path, keep_extension=True) as tmp:
        writer = VideoWriter(tmp, Path(path), fps, size)
        try:
            yield writer
        finally:
            writer.writer.release()


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
