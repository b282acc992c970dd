"""Detect anomalies in any video.

    python detect.py --video=<file | folder of frames | camera index> --trained_model=<name or path>

Every frame t >= clip_len-1 is predicted from the clip_len-1 frames before it (batched), at the checkpoint's size
and channel layout (frames are resized to img_size x img_size and fed as RGB; grey video becomes three equal
channels, as in training).  The video is streamed: only a few frames are ever in memory.  Writes results/<run>/:

  scores.csv     frame, time_s, psnr, score, flagged (and label with --labels): one row per predicted frame
  annotated.mp4  frame | predicted frame | prediction-error heatmap over the frame, under a banner with the score
                 (green, red when flagged); as many frames as the input: the first clip_len-1 frames, which have no
                 prediction, carry a grey "warming up" banner and an empty prediction panel
  scores.png     score and PSNR against time, threshold, flagged intervals shaded (ground truth with --labels)
  events.json    the flagged intervals (merged when less than --gap seconds apart) with their peak score
  summary.json   the run: source, checkpoint, decision rule, counts, speed, AUC/EER with --labels

Decision (--norm):
  video   the benchmark protocol: PSNR min-max normalised over the whole video (score 1 = the worst frame of this
          video); flagged when score >= --threshold (0.5).  Needs the whole video first, so it is offline only: two
          passes (scores, then the annotated video).  Every video, even a normal one, has a frame scored 1.
  causal  a frame's score is the fraction of normal calibration frames predicted better than it (ffpvad/evaluation/calibration.py);
          flagged at a fixed PSNR threshold that a normal frame falls below with probability --fpr.  Never uses a
          later frame; the only choice for a camera.  Default for cameras (and with --calibrate); video files and
          folders default to video.

Calibration (causal): <checkpoint stem>.calibration.json beside the checkpoint, computed automatically on first
use from the checkpoint's training data when it is present, or explicitly with --calibrate (the training data; use
--data_root if it moved) or --calibrate=<video or folder of normal activity> (your own camera's normal footage:
the right choice for a scene the model was not trained on).

--labels=<csv>: the anomalous intervals of this video in the format of tools/prepare_data.py (one
"video, first frame, last frame" per line, 0-based inclusive, the video named by its file or folder name): the run
then also reports frame-level AUC and EER.  For a camera, Ctrl-C ends the run and writes everything; for a file it
aborts (no output file is left half-written).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from ffpvad.evaluation import calibration as cal
from ffpvad.checkpoint import load_checkpoint
from ffpvad.config import NON_NEGATIVE, POSITIVE, OneLineParser, Range, check_setting, parse_bool
from ffpvad.data.dataset import frames_dir
from ffpvad.errors import STOP_SIGNALS, UserError, run_cli
from ffpvad.evaluation.evaluate import pyplot, save_figure
from ffpvad.inference import Inference, load_for_stream
from ffpvad.ioutil import atomic_write_text, ensure_writable_dir, human_bytes, write_reason
from ffpvad.data.labels import labels_from_intervals, read_interval_file
from ffpvad.evaluation.localization import DEFAULT_SIGMA
from ffpvad.evaluation.scores import SCORES
from ffpvad.evaluation.metrics import anomaly_scores, equal_error_rate, micro_auc
from ffpvad.detection.predictor import Prediction, StreamPredictor, to_model_frame  # noqa: F401
from ffpvad.evaluation.scene import colour_spread, mismatch_warnings, trained_on_grey
from ffpvad.data.video_io import open_source
from ffpvad.detection.video_out import atomic_video

BANNER_GREEN = (40, 150, 40)  # BGR
BANNER_RED = (30, 30, 200)
BANNER_GREY = (110, 110, 110)
SPILL_MAX_BYTES = 4 * 2**30  # pass 1's predictions kept on disk for pass 2 up to this size (or half the free space)
OUTPUT_FIX = "choose another with --output or --results_dir"
MAX_FPS = 1000.0  # --fps above this is a typo (PyAV overflows on 1e300); high-speed cameras stay well below
DEFAULT_HEAT_MAX = 0.02  # squared error on [0, 1] at which the heatmap saturates (about 14% intensity error)


# --- command line ---------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="detect.py", description=__doc__, allow_abbrev=False,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", required=True, help="a video file, a folder of frames, or a camera index (0)")
    p.add_argument("--trained_model", required=True, help="checkpoint name in --weights_dir or a path")
    p.add_argument("--weights_dir", default="weights")
    p.add_argument("--results_dir", default="results")
    p.add_argument("--run", default="", help="results/<run>/ (default <video name>_<checkpoint name>)")
    p.add_argument("--output", default="", help="write here instead of results/<run>/")
    p.add_argument("--norm", choices=("video", "causal"), default=None,
                   help="video (benchmark min-max, offline) or causal (calibrated); default causal for a camera, "
                        "video otherwise")
    p.add_argument("--fpr", type=float, default=0.01, help="causal: target false-alarm rate on normal frames")
    p.add_argument("--threshold", type=float, default=0.5, help="video: flag frames with min-max score >= this")
    p.add_argument("--calibrate", nargs="?", const="dataset", default="",
                   help="(re)compute the causal calibration from the checkpoint's training data, or from "
                        "--calibrate=<video or folder of normal activity>")
    p.add_argument("--calibration", default="", help="calibration file (default beside the checkpoint)")
    p.add_argument("--data_root", default="", help="where the checkpoint's dataset is (default: as trained)")
    p.add_argument("--cache_dir", default="", help="frame cache for calibration (default: as trained)")
    p.add_argument("--labels", default="", help="anomalous intervals of this video (video, first, last; 0-based)")
    p.add_argument("--gap", type=float, default=1.0, help="merge flagged intervals closer than this (seconds)")
    p.add_argument("--fps", type=float, default=0.0, help="frame rate (default: the video's; 25 for a folder)")
    p.add_argument("--max_frames", type=int, default=0, help="stop after this many frames (0 = all)")
    p.add_argument("--score", default="", metavar="{" + ",".join(SCORES.names()) + "}",
                   help="frame score (ffpvad/evaluation/scores.py; default: the checkpoint's, psnr for the paper's)")
    p.add_argument("--sigma", type=float, default=None, help="smoothing of the error map in model pixels")
    p.add_argument("--heat_max", type=float, default=DEFAULT_HEAT_MAX,
                   help="squared error at which the heatmap saturates")
    p.add_argument("--img_size", type=int, default=0, help="must equal the checkpoint's (frames are resized to it)")
    p.add_argument("--batch_size", type=int, default=0, help="frames per forward pass (0 = 4 on CPU, 32 on CUDA)")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="auto", choices=("auto", "off", "bf16", "fp16"))
    p.add_argument("--channels_last", default="auto", choices=("auto", "on", "off"))
    p.add_argument("--num_threads", type=int, default=0)
    p.add_argument("--progress", type=parse_bool, nargs="?", const=True, default=True, metavar="BOOL")
    return p


def check_run_name(run: str) -> None:
    """--run names one folder inside --results_dir: no path separator, no '..', nothing the file system refuses."""
    if not run:
        return
    if run in (".", "..") or "/" in run or "\\" in run or "\x00" in run or Path(run).name != run:
        raise UserError(f"--run={run!r} must be a single folder name inside --results_dir (no '/', '\\' or '..'); "
                        f"to write elsewhere, pass --output=<folder>")
    if len(run.encode()) > 200:
        raise UserError(f"--run is {len(run.encode())} bytes long: give a name of at most 200")


def check_options(args: argparse.Namespace) -> None:
    """Every numeric flag finite and in range: one UserError line naming the flag (config.check_setting)."""
    if not args.video.strip():
        raise UserError("--video is empty: give a video file, a folder of frames or a camera index (0)")
    check_run_name(args.run)
    if not 0 < args.fpr < 1:  # nan too
        raise UserError(f"--fpr={args.fpr} must be between 0 and 1 (a false-alarm rate such as 0.01)")
    for name, kind, valid in (("threshold", float, Range(0, 1, note="a min-max normalised score")),
                              ("gap", float, NON_NEGATIVE),
                              ("fps", float, Range(0, MAX_FPS, note="0 = the video's")),
                              ("max_frames", int, Range(0, note="0 = all")),
                              ("sigma", float, NON_NEGATIVE),
                              ("heat_max", float, POSITIVE),
                              ("img_size", int, Range(0, note="0 = the checkpoint's")),
                              ("batch_size", int, Range(0, note="0 = automatic")),
                              ("num_threads", int, Range(0, note="0 = torch's default"))):
        if getattr(args, name) is not None:  # --sigma: None = the default of ffpvad/evaluation/localization.py
            check_setting(name, getattr(args, name), kind, range=valid)


# --- the checkpoint -------------------------------------------------------------------------------------------

def load_generator(args: argparse.Namespace):
    """(config, generator, checkpoint path) for this run's flags (inference.load_for_stream checks it can
    stream)."""
    overrides = {k: getattr(args, k) for k in ("device", "amp", "channels_last", "num_threads", "data_root",
                                               "cache_dir", "score") if getattr(args, k)}
    overrides["eval_batch_size"] = args.batch_size  # 0 = automatic: the training machine's setting does not apply
    return load_for_stream(args.trained_model, args.weights_dir, overrides, args.img_size)


# --- streaming prediction -------------------------------------------------------------------------------------

class FrameFeed:
    """The source's frames with a frame limit, read times, and (cameras) a clean stop on the first Ctrl-C."""

    COLOUR_EVERY = 25  # frames between two samples of the colour spread (ffpvad/evaluation/scene.py)

    def __init__(self, frames: Iterable[np.ndarray], max_frames: int = 0, live: bool = False):
        self.frames, self.max_frames, self.live = frames, max_frames, live
        self.times: list[float] = []
        self.stopped = False
        self.colour_spread = 0.0  # the largest sampled: a grey video with one colour logo stays grey
        self._start = None

    def __iter__(self) -> Iterator[np.ndarray]:
        self._start = time.perf_counter()
        for frame in self.frames:
            if self.stopped or (self.max_frames and len(self.times) >= self.max_frames):
                return
            if len(self.times) % self.COLOUR_EVERY == 0 and isinstance(frame, np.ndarray):
                self.colour_spread = max(self.colour_spread, colour_spread(frame))
            self.times.append(time.perf_counter() - self._start)
            yield frame

    def stop(self, *_args) -> None:
        if self.stopped:  # a second Ctrl-C aborts
            raise KeyboardInterrupt
        self.stopped = True


# --- rendering ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    panel_w: int
    panel_h: int
    banner_h: int

    @property
    def size(self) -> tuple[int, int]:
        return 3 * self.panel_w, self.panel_h + self.banner_h

    @classmethod
    def for_source(cls, width: int, height: int) -> "Layout":
        """Panels at the source's height clamped to 120..360 px, aspect kept, even sizes (what codecs want)."""
        h = int(np.clip(height, 120, 360))
        w = max(2, int(round(width * h / height / 2)) * 2)
        h -= h % 2
        return cls(w, h, max(20, (h // 9) // 2 * 2))


def _put_text(image: np.ndarray, text: str, origin: tuple[int, int], scale: float, color=(255, 255, 255)) -> None:
    """Text on a darkened box just larger than it.  (A black outline drawn thicker than the letters ran past the
    last one and read as a doubled letter: "predictedd".)"""
    (width, height), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x, y = origin
    box = image[max(0, y - height - 3):min(image.shape[0], y + baseline + 1), max(0, x - 3):min(image.shape[1],
                                                                                                  x + width + 3)]
    box[:] = (box * 0.35).astype(np.uint8)
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)


def _banner(layout: Layout, text: str, color: tuple[int, int, int]) -> np.ndarray:
    width = layout.size[0]
    banner = np.empty((layout.banner_h, width, 3), np.uint8)
    banner[:] = color
    scale = layout.banner_h / 40
    text_w = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0]
    if text_w > width - 12:
        scale *= (width - 12) / text_w
    cv2.putText(banner, text, (6, int(layout.banner_h * 0.7)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                cv2.LINE_AA)
    return banner


def heat_overlay(frame: np.ndarray, amap: np.ndarray, heat_max: float) -> np.ndarray:
    """The map in the JET colour map over the frame, opaque where the error is large, transparent where it is 0."""
    value = np.clip(cv2.resize(amap, frame.shape[1::-1], interpolation=cv2.INTER_LINEAR) / heat_max, 0, 1)
    colour = cv2.applyColorMap((value * 255).astype(np.uint8), cv2.COLORMAP_JET).astype(np.float32)
    alpha = 0.7 * value[..., None]
    return (frame.astype(np.float32) * (1 - alpha) + colour * alpha).astype(np.uint8)


def render(layout: Layout, p: Prediction, banner: str, color, heat_max: float) -> np.ndarray:
    size = (layout.panel_w, layout.panel_h)
    frame = cv2.resize(p.frame, size, interpolation=cv2.INTER_AREA)
    if p.predicted is None:
        predicted = np.zeros_like(frame)
        _put_text(predicted, "no prediction yet", (6, layout.panel_h // 2), layout.banner_h / 55)
        heat = frame.copy()
    else:
        predicted = cv2.resize(np.ascontiguousarray(p.predicted[:, :, ::-1]), size, interpolation=cv2.INTER_LINEAR)
        heat = heat_overlay(frame, p.amap, heat_max)
    scale = layout.banner_h / 60
    for panel, caption in ((frame, "input"), (predicted, "predicted"), (heat, "prediction error")):
        _put_text(panel, caption, (5, layout.panel_h - 7), scale)
    return np.vstack([_banner(layout, banner, color), np.hstack([frame, predicted, heat])])


def banner_text(p: Prediction, t: float, score: float, flagged: bool, n_inputs: int, value: str = "PSNR") -> str:
    if p.psnr is None:
        return f"frame {p.index}  t={t:.2f}s  warming up: needs {n_inputs} previous frames"
    return (f"frame {p.index}  t={t:.2f}s  {value} {p.psnr:.2f} dB  score {score:.3f}"
            + ("  ANOMALY" if flagged else ""))


# --- events, labels, plots ------------------------------------------------------------------------------------

def merge_events(frames: np.ndarray, flagged: np.ndarray, scores: np.ndarray, times: np.ndarray,
                 max_gap: int) -> list[dict]:
    """Runs of flagged frames, merged when at most ``max_gap`` unflagged frames separate them."""
    events: list[dict] = []
    for k in np.flatnonzero(flagged):
        if events and frames[k] - events[-1]["_last"] - 1 <= max_gap:
            event = events[-1]
        else:
            event = {"_first": k, "_peak": k, "flagged_frames": 0}
            events.append(event)
        event["_last"] = frames[k]
        event["_last_k"] = k
        event["flagged_frames"] += 1
        if scores[k] > scores[event["_peak"]]:
            event["_peak"] = k
    out = []
    for e in events:
        first, last, peak = e["_first"], e["_last_k"], e["_peak"]
        out.append({
            "start_frame": int(frames[first]), "end_frame": int(frames[last]),
            "start_s": round(float(times[first]), 3), "end_s": round(float(times[last]), 3),
            "peak_score": round(float(scores[peak]), 6), "peak_frame": int(frames[peak]),
            "peak_s": round(float(times[peak]), 3), "flagged_frames": int(e["flagged_frames"]),
        })
    return out


def read_labels(path: str, video_name: str):
    """Intervals of this video from a tools/prepare_data.py interval file (checked now, applied after the run)."""
    intervals = read_interval_file(Path(path))
    names = {video_name}
    unknown = [v for v in intervals if v not in names and Path(v).stem not in names]
    if unknown:
        raise UserError(f"{path}: '{unknown[0]}' is not this video (named '{video_name}'): name the video by its "
                        f"file or folder name")
    return intervals


def labels_for(path: str, intervals, video_name: str, n_frames: int) -> np.ndarray:
    renamed = {video_name: [span for spans in intervals.values() for span in spans]}
    return labels_from_intervals(Path(path), renamed, [video_name], [n_frames])[0]


def value_name(cfg) -> str:
    """What the per-frame dB value is: PSNR, or the --score's value (ffpvad/evaluation/scores.py)."""
    return "PSNR" if cfg.score == "psnr" else cfg.score


def scores_csv(frames: np.ndarray, times: np.ndarray, psnrs: np.ndarray, scores: np.ndarray, flagged: np.ndarray,
               labels: Optional[np.ndarray], column: str = "psnr") -> str:
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["frame", "time_s", column, "score", "flagged"] + (["label"] if labels is not None else []))
    for k in range(len(frames)):
        writer.writerow([int(frames[k]), f"{times[k]:.3f}", f"{psnrs[k]:.4f}", f"{scores[k]:.6f}", int(flagged[k])]
                        + ([int(labels[k])] if labels is not None else []))
    return rows.getvalue()


def plot_scores(path: Path, times: np.ndarray, scores: np.ndarray, psnrs: np.ndarray, threshold: float,
                psnr_threshold: Optional[float], events: list[dict], labels: Optional[np.ndarray], title: str,
                frame_s: float, value: str = "PSNR") -> None:
    plt = pyplot()
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 4.6), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    for axis in (top, bottom):
        for k, e in enumerate(events):
            axis.axvspan(e["start_s"], e["end_s"] + frame_s, color="tab:red", alpha=0.18, lw=0,
                         label="flagged" if k == 0 and axis is top else None)
    if labels is not None:
        top.fill_between(times, -0.06, -0.06 + 0.05 * labels, step="mid", color="tab:orange",
                         label="ground truth (anomalous)")
    top.plot(times, scores, color="tab:blue", lw=1, label="anomaly score")
    top.axhline(threshold, color="tab:red", ls="--", lw=1, label=f"threshold {threshold:g}")
    top.set(ylabel="score", ylim=(-0.08, 1.04), title=title)
    top.legend(loc="center left", fontsize=7, ncol=2)
    bottom.plot(times, psnrs, color="tab:green", lw=1)
    if psnr_threshold is not None:
        bottom.axhline(psnr_threshold, color="tab:red", ls="--", lw=1)
    bottom.set(xlabel="time (s)", ylabel=f"{value} (dB)")
    save_figure(figure, path)


# --- the run --------------------------------------------------------------------------------------------------

def prepare_output(args: argparse.Namespace, source, checkpoint: Path) -> Path:
    if args.output:
        folder = Path(args.output)
    else:
        run = args.run or f"{source.name}_{checkpoint.stem}"
        if source.kind == "camera" and not args.run:
            run += time.strftime("_%Y%m%d-%H%M%S")
        folder = Path(args.results_dir) / run
    return ensure_writable_dir(folder, "to output folder", OUTPUT_FIX)


def get_calibration(args: argparse.Namespace, ctx: Inference, sigma: float):
    """The causal calibration: loaded, or computed (and saved) when asked, missing or made for another checkpoint."""
    cfg, checkpoint = ctx.cfg, ctx.checkpoint
    path = Path(args.calibration) if args.calibration else cal.calibration_path(checkpoint)
    sha = cal.file_sha256(checkpoint)
    if not args.calibrate and path.exists():
        existing = cal.Calibration.load(path)
        same_checkpoint = existing.checkpoint_sha256 == sha and existing.img_size == cfg.img_size
        if same_checkpoint and existing.score == cfg.score:
            return existing, path, False
        why = (f"was made with --score={existing.score}, not --score={cfg.score}" if same_checkpoint
               else "was made for another checkpoint")
        if not args.calibration and not cal.dataset_available(cfg):
            raise UserError(f"calibration {path} {why}: run with --calibrate (the training data) or "
                            f"--calibrate=<video of normal activity>")
        print(f"note: {path} {why}: calibrating again")
    if args.calibrate and args.calibrate != "dataset":
        normal = open_source(args.calibrate, args.fps)
        predictor = StreamPredictor(ctx, sigma, maps=False)
        values = [p.psnr for p in _progress(predictor.run(normal.frames()), normal.n_frames, "calibrating",
                                            args.progress) if p.psnr is not None]
        result = cal.from_psnr(values, f"normal footage {args.calibrate}", sha, cfg.img_size, optimistic=False,
                               videos=[normal.name], note="user-supplied normal footage", score=cfg.score)
    else:
        if not cal.dataset_available(cfg):
            raise UserError(f"no calibration for {checkpoint} ({path} does not exist) and no training frames at "
                            f"{frames_dir(cfg, 'training')} to make one: pass --data_root=<folder with "
                            f"{cfg.dataset}/>, or --calibrate=<video of normal activity>, or use --norm=video")
        print(f"calibrating the causal score on the normal training frames of {cfg.dataset} (once; saved to {path})")
        result = cal.from_dataset(ctx, sha, args.progress)
    result.save(path, checkpoint, {"amp": ctx.precision})
    return cal.Calibration.load(path), path, True  # as stored (4 decimals): this run and later ones agree


def _progress(iterable, total, desc: str, enabled: bool):
    return tqdm(iterable, total=total, desc=desc, unit="frame", disable=not enabled, dynamic_ncols=True,
                leave=False)


@dataclass
class Run:
    """What one detection run works with, set up from the flags before the first frame is read."""
    cfg: object  # config.Config of the checkpoint, with this run's device settings
    predictor: StreamPredictor
    checkpoint: Path
    norm: str  # video (per-video min-max, two passes) or causal (calibrated threshold, one pass)
    folder: Path
    sigma: float
    calib: Optional[cal.Calibration] = None
    calib_path: Optional[Path] = None


@dataclass
class Track:
    """The per-frame results of a run: every predicted frame's index, PSNR and score."""
    frames: np.ndarray
    psnrs: np.ndarray
    scores: np.ndarray
    n_frames: int  # frames read, warm-up included
    seconds: float
    times: np.ndarray
    flagged: np.ndarray
    stopped: bool
    colour_spread: float = 0.0  # the video's largest sampled colour spread (ffpvad/evaluation/scene.py)


def set_up(args: argparse.Namespace, source) -> Run:
    """The checkpoint's generator on this machine's device, the decision rule, the output folder and, for the
    causal rule, the calibration: every check that can fail runs before the first frame is scored."""
    cfg, generator, checkpoint = load_generator(args)
    norm = args.norm or ("causal" if source.kind == "camera" or args.calibrate or args.calibration else "video")
    if norm == "video" and source.kind == "camera":
        raise UserError("--norm=video needs the whole video (per-video min-max): a camera has none, use "
                        "--norm=causal")
    folder = prepare_output(args, source, checkpoint)
    ctx = Inference.set_up(cfg, generator, checkpoint=checkpoint)
    sigma = DEFAULT_SIGMA if args.sigma is None else args.sigma
    run = Run(ctx.cfg, StreamPredictor(ctx, sigma), ctx.checkpoint, norm, folder, sigma)
    if norm == "causal":
        run.calib, run.calib_path, _ = get_calibration(args, ctx, sigma)
        calib = run.calib
        print(f"causal calibration: {calib.n_frames} normal frames from {calib.source}"
              + (" (optimistic: the network trained on them)" if calib.optimistic else "")
              + f"; flag below {calib.psnr_threshold(args.fpr):.2f} dB (fpr {args.fpr:g})")
        if args.fpr < calib.smallest_fpr():
            print(f"note: {calib.n_frames} calibration frames cannot set a false-alarm rate below "
                  f"{calib.smallest_fpr():.2g}; --fpr={args.fpr:g} flags only frames worse than all of them")
    return run


def too_short(args: argparse.Namespace, n_frames: int, cfg) -> UserError:
    return UserError(f"{args.video} has {n_frames} frames: at least {cfg.clip_len} are needed to predict one "
                     f"(clip_len {cfg.clip_len})")


class PredictionSpill:
    """Pass 1's predictions (RGB uint8 frame and float16 anomaly map per predicted frame) in an unnamed temporary
    file of the output folder, so that pass 2 of --norm=video renders them instead of predicting every frame again
    (half the model time).  The file has no name (the kernel removes it when closed, or when the process is killed)
    and is read back in order.  Beyond ``budget_bytes`` (a long video, a full disk) it is dropped and pass 2
    predicts again, as before."""

    def __init__(self, folder: Path, size: int, budget_bytes: int):
        self.size, self.folder = size, folder
        self.record_bytes = size * size * 3 + size * size * 2
        self.budget = budget_bytes
        self.file = tempfile.TemporaryFile(dir=folder)
        self.count = 0

    @classmethod
    def for_folder(cls, folder: Path, size: int) -> "PredictionSpill":
        free = shutil.disk_usage(folder).free
        return cls(folder, size, min(SPILL_MAX_BYTES, free // 2))

    @property
    def complete(self) -> bool:
        """Whether every prediction is on disk (flushed: a full disk shows here, not in the middle of pass 2)."""
        if self.file is None:
            return False
        try:
            self.file.flush()
        except OSError as exc:
            self.close()
            print(f"note: cannot keep pass 1's predictions on disk ({write_reason(self.folder / 'spill', exc)}): "
                  f"pass 2 predicts again")
            return False
        return True

    def add(self, p: Prediction) -> None:
        if self.file is None:
            return
        if (self.count + 1) * self.record_bytes > self.budget:
            self.close()
            print(f"note: pass 1's predictions would take more than {human_bytes(self.budget)} (at most "
                  f"{human_bytes(SPILL_MAX_BYTES)}, or half the free space of the output folder): pass 2 predicts "
                  f"again")
            return
        try:
            self.file.write(p.predicted.tobytes())
            self.file.write(p.amap.astype(np.float16).tobytes())
        except OSError as exc:  # a full disk: the predictions are computed again instead
            self.close()
            print(f"note: cannot keep pass 1's predictions on disk ({write_reason(self.folder / 'spill', exc)}): "
                  f"pass 2 predicts again")
            return
        self.count += 1

    def replay(self, frames: Iterable[np.ndarray], psnr_of: dict[int, float], n_inputs: int,
               video: str) -> Iterator[Prediction]:
        """The frames again, each predicted one with its stored prediction, map and PSNR (as StreamPredictor)."""
        self.file.seek(0)
        s = self.size
        for index, frame in enumerate(frames):
            if index < n_inputs:
                yield Prediction(index, frame)
                continue
            record = self.file.read(self.record_bytes)
            if index not in psnr_of or len(record) < self.record_bytes:
                raise UserError(f"{video} changed while it was read (frame {index} is new)")
            predicted = np.frombuffer(record, np.uint8, s * s * 3).reshape(s, s, 3)
            amap = np.frombuffer(record, np.float16, s * s, offset=s * s * 3).reshape(s, s).astype(np.float32)
            yield Prediction(index, frame, psnr_of[index], predicted, amap)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def video_scores(args: argparse.Namespace, source, run: Run, total: Optional[int],
                 spill: PredictionSpill) -> tuple[dict[int, float], dict[int, float]]:
    """Pass 1 of --norm=video: every frame's PSNR (kept, with its prediction, in ``spill``), then the per-video
    min-max score of each predicted frame.  Returns (score of, PSNR of) by frame index."""
    feed = FrameFeed(source.frames(), args.max_frames)
    indices, psnrs = [], []
    for p in _progress(run.predictor.run(feed), total, "scoring (pass 1 of 2)", args.progress):
        if p.psnr is not None:
            indices.append(p.index)
            psnrs.append(p.psnr)
            spill.add(p)
    if not psnrs:
        raise too_short(args, len(feed.times), run.cfg)
    return dict(zip(indices, anomaly_scores(np.asarray(psnrs)))), dict(zip(indices, psnrs))


def detect_stream(args: argparse.Namespace, source, run: Run) -> Track:
    """Score every frame and write the annotated video (the second pass of --norm=video, the only one of causal)."""
    cfg = run.cfg
    layout = Layout.for_source(source.width, source.height)
    live = source.kind == "camera"
    total = min(filter(None, (source.n_frames, args.max_frames)), default=None)
    start = time.perf_counter()
    spill = PredictionSpill.for_folder(run.folder, cfg.img_size) if run.norm == "video" else None
    try:
        return _detect_stream(args, source, run, layout, live, total, start, spill)
    finally:
        if spill is not None:
            spill.close()


def _detect_stream(args, source, run: Run, layout: Layout, live: bool, total: Optional[int], start: float,
                   spill: Optional[PredictionSpill]) -> Track:
    cfg, calib = run.cfg, run.calib
    score_of, psnr_of = video_scores(args, source, run, total, spill) if spill is not None else (None, None)
    feed = FrameFeed(source.frames(), args.max_frames, live)
    if spill is not None and spill.complete:  # pass 2 renders pass 1's predictions
        predictions = spill.replay(feed, psnr_of, cfg.n_inputs, args.video)
    else:
        predictions = run.predictor.run(feed)
    # A camera has no end: Ctrl-C, SIGTERM and SIGHUP end its feed, and the run writes everything it has.
    previous = {signum: signal.signal(signum, feed.stop) for signum in STOP_SIGNALS} if live else {}
    indices: list[int] = []
    psnrs: list[float] = []
    scores: list[float] = []
    n_frames = 0
    try:
        with atomic_video(run.folder / "annotated.mp4", source.fps, layout.size,
                          audio_from=source.spec if source.kind == "file" else None, fix=OUTPUT_FIX) as writer:
            desc = "detecting" + (" (pass 2 of 2)" if score_of is not None else "")
            for p in _progress(predictions, total, desc, args.progress):
                n_frames += 1
                t = feed.times[p.index] if live else p.index / source.fps
                if p.psnr is None:
                    writer.write(render(layout, p, banner_text(p, t, 0, False, cfg.n_inputs), BANNER_GREY,
                                        args.heat_max))
                    continue
                if score_of is not None:
                    if p.index not in score_of:
                        raise UserError(f"{args.video} changed while it was read (frame {p.index} is new)")
                    score = float(score_of[p.index])
                    flagged = score >= args.threshold
                else:
                    score = float(calib.scores([p.psnr])[0])
                    flagged = bool(calib.flagged([p.psnr], args.fpr)[0])
                indices.append(p.index)
                psnrs.append(p.psnr)
                scores.append(score)
                writer.write(render(layout, p, banner_text(p, t, score, flagged, cfg.n_inputs, value_name(cfg)),
                                    BANNER_RED if flagged else BANNER_GREEN, args.heat_max))
            if not psnrs:
                raise too_short(args, n_frames, cfg)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    seconds = time.perf_counter() - start
    if score_of is not None and len(psnrs) != len(score_of):
        raise UserError(f"{args.video} gave {len(psnrs)} predicted frames on the second pass but "
                        f"{len(score_of)} on the first: the file changed while it was read")
    frames, psnr_arr, score_arr = np.asarray(indices), np.asarray(psnrs), np.asarray(scores)
    times = np.asarray([feed.times[i] for i in indices]) if live else frames / source.fps
    flagged_arr = score_arr >= args.threshold if score_of is not None else calib.flagged(psnr_arr, args.fpr)
    return Track(frames, psnr_arr, score_arr, n_frames, seconds, times, flagged_arr, feed.stopped,
                 feed.colour_spread)


def reference_psnr(run: Run) -> Optional[tuple[float, str]]:
    """The PSNR that normal frames reached for this checkpoint: the median of its calibration (this run's, or a
    matching one beside the checkpoint), else the best held-out normal PSNR of its training; None without either."""
    calib = run.calib
    if calib is None and cal.calibration_path(run.checkpoint).exists():
        try:
            stored = cal.Calibration.load(cal.calibration_path(run.checkpoint))
        except UserError:
            stored = None
        if stored is not None and stored.checkpoint_sha256 == cal.file_sha256(run.checkpoint):
            calib = stored
    if calib is not None:
        return float(np.median(calib.values)), f"the median of its calibration on {calib.source}"
    best = load_checkpoint(run.checkpoint).get("best_val_psnr")  # read again: weights only, a few MB
    if isinstance(best, (int, float)) and np.isfinite(best):
        return float(best), "its best held-out normal PSNR in training"
    return None


def scene_warnings(run: Run, track: Track) -> list[str]:
    """ffpvad/evaluation/scene.py's checks for this video and checkpoint, each printed as a warning line (and kept in summary.json).
    A check that cannot be made (an unreadable calibration or training frame) is skipped: a warning never fails a
    run."""
    try:
        reference = reference_psnr(run)
    except (UserError, OSError):
        reference = None
    try:
        grey = trained_on_grey(run.cfg)
    except (UserError, OSError):
        grey = None
    found = mismatch_warnings(track.psnrs, track.colour_spread, reference, grey, run.norm)
    for line in found:
        print(f"warning: {line}")
    return found


def write_outputs(args: argparse.Namespace, source, run: Run, track: Track, intervals) -> dict:
    """scores.csv, events.json, summary.json and scores.png (each written to a temporary name and renamed)."""
    cfg, calib = run.cfg, run.calib
    warnings = scene_warnings(run, track)  # before any file is written
    if run.norm == "video":
        threshold, psnr_threshold = args.threshold, None
    else:
        threshold, psnr_threshold = 1.0 - args.fpr, calib.psnr_threshold(args.fpr)
    events = merge_events(track.frames, track.flagged, track.scores, track.times, int(round(args.gap * source.fps)))
    labels = (labels_for(args.labels, intervals, source.name, track.n_frames)[track.frames]
              if intervals is not None else None)
    column = "psnr" if cfg.score == "psnr" else f"{cfg.score}_db"
    atomic_write_text(run.folder / "scores.csv", scores_csv(track.frames, track.times, track.psnrs, track.scores,
                                                            track.flagged, labels, column), fix=OUTPUT_FIX)
    summary = {
        "video": args.video, "source_kind": source.kind, "fps": source.fps, "frames": track.n_frames,
        "predicted_frames": int(len(track.frames)), "warm_up_frames": min(track.n_frames, cfg.n_inputs),
        "checkpoint": str(run.checkpoint), "img_size": cfg.img_size, "clip_len": cfg.clip_len, "norm": run.norm,
        "frame_score": cfg.score,
        "threshold": threshold, "flagged_frames": int(track.flagged.sum()), "events": len(events),
        "merge_gap_s": args.gap, "map_sigma_px": run.sigma, "seconds": round(track.seconds, 2),
        "frames_per_second": round(track.n_frames / track.seconds, 2) if track.seconds > 0 else None,
        "passes": 2 if run.norm == "video" else 1, "stopped_by_user": track.stopped,
        "warnings": warnings,
    }
    if calib is not None:
        summary.update(fpr=args.fpr, psnr_threshold=psnr_threshold, calibration=str(run.calib_path),
                       calibration_source=calib.source, calibration_frames=calib.n_frames,
                       calibration_optimistic=calib.optimistic)
    if labels is not None:
        has_both = 0 < labels.sum() < len(labels)
        summary.update(labels=args.labels, anomalous_frames=int(labels.sum()),
                       auc=micro_auc([track.scores], [labels]) if has_both else None,
                       eer=equal_error_rate(track.scores, labels) if has_both else None)
    atomic_write_text(run.folder / "events.json", json.dumps({"video": args.video, "norm": run.norm,
                                                              "threshold": threshold, "merge_gap_s": args.gap,
                                                              "events": events}, indent=2) + "\n", fix=OUTPUT_FIX)
    atomic_write_text(run.folder / "summary.json", json.dumps(summary, indent=2) + "\n", fix=OUTPUT_FIX)
    plot_scores(run.folder / "scores.png", track.times, track.scores, track.psnrs, threshold, psnr_threshold, events,
                labels, f"{source.name}: {run.norm} scores ({run.checkpoint.stem})", 1.0 / source.fps,
                value_name(cfg))
    return summary


def summary_line(args: argparse.Namespace, run: Run, track: Track, summary: dict) -> str:
    line = (f"{args.video}: {track.n_frames} frames ({len(track.frames)} predicted) in {track.seconds:.1f} s = "
            f"{track.n_frames / max(track.seconds, 1e-9):.1f} frames/s{' over 2 passes' if run.norm == 'video' else ''}"
            f"; {int(track.flagged.sum())} flagged ({100 * track.flagged.mean():.1f}%) in {summary['events']} events; "
            f"norm={run.norm}")
    if "auc" in summary:
        line += ("; " + (f"AUC {100 * summary['auc']:.2f}%, EER {100 * summary['eer']:.2f}%" if summary["auc"]
                        is not None else "AUC n/a (the labels do not mark both classes among predicted frames)"))
    return line


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_options(args)
    source = open_source(args.video, args.fps)
    try:
        intervals = read_labels(args.labels, source.name) if args.labels else None
        run = set_up(args, source)
        track = detect_stream(args, source, run)
        summary = write_outputs(args, source, run, track, intervals)
    finally:
        source.close()
    print(summary_line(args, run, track, summary))
    print(f"wrote {run.folder}/ (annotated.mp4, scores.csv, scores.png, events.json, summary.json)")
    return 0


def cli() -> None:
    """The console script."""
    run_cli(main)


if __name__ == "__main__":
    cli()
