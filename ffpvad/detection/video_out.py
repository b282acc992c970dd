"""The annotated video: H.264 in MP4 that browsers play, the source's audio kept, written atomically.

Encoded with PyAV (FFmpeg's libraries in a wheel from the package registry; no system ffmpeg): H.264 (libx264),
pixel format yuv420p, ``+faststart`` (the index first, so a browser starts playing before the end has arrived).
Where PyAV or its H.264 encoder is missing, OpenCV's MPEG-4 Part 2 (``mp4v``) is the fallback, and it says so:
VLC plays that, Chrome and Firefox do not.

Audio: when the source is a file with an audio track, the track is copied into the result (re-encoded to AAC when
MP4 cannot carry its codec), cut at the video's end; when that fails the result keeps the video alone and one line
says the audio was dropped.  The file appears under its name only when complete (ioutil.atomic_path).
"""
from __future__ import annotations

from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator, Optional

import cv2
import numpy as np

from ffpvad.errors import UserError
from ffpvad.ioutil import atomic_path

CRF = "23"  # x264's default quality
PRESET = "veryfast"  # encoding is a few percent of detect.py's time at this preset (docs/detection.md)


def h264_available() -> bool:
    try:
        import av  # FFmpeg's libraries: imported only where a video is written
        av.codec.Codec("libx264", "w")
    except Exception:  # no PyAV, or a build without libx264
        return False
    return True


class VideoWriter:
    """Frames (BGR uint8, all of ``size``) in, an MP4 at ``tmp`` out: H.264 when available, else mp4v."""

    def __init__(self, tmp: Path, final: Path, fps: float, size: tuple[int, int], say: Callable[[str], None] = print):
        self.tmp, self.final, self.size, self.fps, self.frames = tmp, final, size, fps, 0
        self.codec = "h264" if h264_available() else "mp4v"
        if self.codec == "h264":
            import av
            self.container = av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"})
            self.stream = self.container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            self.stream.width, self.stream.height = size
            self.stream.pix_fmt = "yuv420p"
            self.stream.options = {"crf": CRF, "preset": PRESET}
        else:
            say(f"note: no H.264 encoder (PyAV with libx264): writing {final.name} as MPEG-4 Part 2 (mp4v), which VLC "
                f"plays but web browsers do not")
            self.writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), size)
            if not self.writer.isOpened():
                raise UserError(f"cannot write {final}: OpenCV could not open an mp4 writer there (folder not "
                                f"writable, or no MPEG-4 encoder in this OpenCV build)")

    def write(self, frame: np.ndarray) -> None:
        if frame.shape[1::-1] != self.size:
            raise ValueError(f"frame size {frame.shape[1::-1]} != video size {self.size}")
        if self.codec == "h264":
            import av
            for packet in self.stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="bgr24")):
                self.container.mux(packet)
        else:
            self.writer.write(frame)
        self.frames += 1

    def close(self, complete: bool) -> None:
        if self.codec == "h264":
            try:
                if complete:
                    for packet in self.stream.encode(None):
                        self.container.mux(packet)
            finally:
                self.container.close()
        else:
            self.writer.release()


def audio_tracks(source: str) -> int:
    """How many audio tracks a video file has (0 when PyAV cannot open it or is missing)."""
    try:
        import av
        with av.open(source) as container:
            return len(container.streams.audio)
    except Exception:
        return 0


def add_audio(video: Path, source: str, out: Path) -> None:
    """``video``'s stream with ``source``'s first audio track, cut at the video's end, into ``out`` (MP4)."""
    import av
    with av.open(str(video)) as picture, av.open(source) as sound, \
            av.open(str(out), "w", format="mp4", options={"movflags": "+faststart"}) as muxed:
        v_in, a_in = picture.streams.video[0], sound.streams.audio[0]
        v_out = muxed.add_stream_from_template(v_in)
        end = float(v_in.duration * v_in.time_base) if v_in.duration else None
        copy = a_in.codec_context.name in ("aac", "mp3", "ac3", "opus", "alac", "flac")
        a_out = muxed.add_stream_from_template(a_in) if copy else muxed.add_stream("aac", rate=a_in.rate or 48000)
        for packet in picture.demux(v_in):
            if packet.dts is not None:
                packet.stream = v_out
                muxed.mux(packet)
        for packet in sound.demux(a_in):
            if packet.dts is None:
                continue
            if end is not None and packet.pts is not None and float(packet.pts * a_in.time_base) > end:
                break
            if copy:
                packet.stream = a_out
                muxed.mux(packet)
            else:
                for frame in packet.decode():
                    frame.pts = None
                    for encoded in a_out.encode(frame):
                        muxed.mux(encoded)
        if not copy:
            for encoded in a_out.encode(None):
                muxed.mux(encoded)


@contextmanager
def atomic_video(path: Path, fps: float, size: tuple[int, int], audio_from: Optional[str] = None,
                 say: Callable[[str], None] = print, fix: str = "choose another folder") -> Iterator[VideoWriter]:
    """Write frames to a temporary file beside ``path``; when the block ends normally, add ``audio_from``'s audio
    (a video file) and rename the result to ``path``.  On an error nothing is left under ``path``; a full disk or
    a read-only folder is one ioutil.WriteFailed line ending with ``fix``."""
    path = Path(path)
    with atomic_path(path, keep_extension=True, fix=fix) as tmp:
        writer = VideoWriter(tmp, path, fps, size, say)
        complete = False
        try:
            yield writer
            complete = True
        finally:
            writer.close(complete)
        if audio_from and audio_tracks(audio_from):
            if writer.codec != "h264":
                say(f"note: the audio of {audio_from} is dropped (it is kept only with the H.264 writer)")
                return
            try:
                with atomic_path(tmp, keep_extension=True) as muxed:  # renamed onto tmp when complete
                    add_audio(tmp, audio_from, muxed)
            except Exception as exc:  # an odd audio codec or a damaged track: the silent video stays, said aloud
                first = str(exc).splitlines()[0] if str(exc) else "cannot copy it"
                say(f"note: the audio of {audio_from} is dropped ({type(exc).__name__}: {first})")
