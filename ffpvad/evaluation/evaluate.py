"""Predict every test frame, score it, and write the artifacts of an evaluation run.

Used by ``eval.py`` and by the validation step of training, so both give the same numbers.  The method of the
generator (ffpvad/methods/) says what its input and target are, which per-frame errors beyond PSNR it needs, and how they
make the anomaly value; that value is then min-max normalised per video (``--score_norm=video``, the FFP protocol)
or over the whole test set (``global``).  For PSNR with per-video normalisation this is exactly metrics.frame_metrics.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ffpvad.training import distributed
from ffpvad.config import Config
from ffpvad.errors import UserError
from ffpvad.data.dataset import TestSet, VideoSet, iter_test_batches, n_predicted_frames, to_model_range
from ffpvad.ioutil import atomic_path, atomic_write_text, ensure_writable_dir
from ffpvad.inference import Inference
from ffpvad.evaluation.metrics import FrameMetrics, anomaly_scores, metrics_of_scores, normalise_scores
from ffpvad.evaluation.scores import frame_score


# Called after every batch with (video index, target frame indices, prediction, target), images in [-1, 1]:
# how the pixel-level evaluation (localization.PixelAccumulator) sees the predictions without a second pass.
BatchHook = Callable[[int, np.ndarray, torch.Tensor, torch.Tensor], None]


@torch.inference_mode()
def predict_psnr(ctx: Inference, videos: VideoSet, progress: bool = True, on_batch: Optional[BatchHook] = None,
                 errors: Optional["FrameErrorCollector"] = None) -> list[np.ndarray]:
    """PSNR of every predicted frame (targets clip_len-1 .. T-1), one array per video, batched over frames: the
    value of ``--score`` in dB (ffpvad/evaluation/scores.py; PSNR itself by default).  ``errors`` keeps the
    method's other per-frame errors of the same predictions."""
    generator, clip_len = ctx.generator, ctx.cfg.clip_len
    was_training = generator.training
    generator.eval()
    out = [np.empty(max(0, n - clip_len + 1), dtype=np.float64) for n in videos.counts]
    bar = tqdm(total=n_predicted_frames(videos, clip_len), desc="evaluating", unit="frame",
               disable=not progress, leave=False)
    score = frame_score(ctx.cfg.score)
    for v, targets, clips in iter_test_batches(videos, clip_len, ctx.batch_size):
        x = to_model_range(clips.to(ctx.device, non_blocking=True))
        prediction, target, terms = ctx.predict(x)
        out[v][targets - (clip_len - 1)] = score(prediction, target, x[:, -2]).cpu().numpy()
        if errors is not None:
            errors.add(v, targets, prediction, target, terms)
        if on_batch is not None:
            on_batch(v, targets, prediction, target)
        bar.update(len(targets))
    bar.close()
    generator.train(was_training)
    return out


def predict_psnr_sharded(ctx: Inference, videos: VideoSet, progress: bool = True,
                         on_batch: Optional[BatchHook] = None,
                         errors: Optional["FrameErrorCollector"] = None) -> list[np.ndarray]:
    """:func:`predict_psnr` over all torchrun ranks: each predicts its share of the videos (with rank 0's weights,
    broadcast first) and every rank gets every video's PSNRs back, in video order.  The batches are the
    single-process batches (they never cross a video), so the values are exactly the single-process values.
    ``on_batch`` and ``errors`` see this rank's batches with the global video index.  Without a group:
    predict_psnr itself."""
    if not distributed.active():
        return predict_psnr(ctx, videos, progress, on_batch, errors)
    distributed.broadcast_module(ctx.generator)
    mine = distributed.shard(videos.counts, distributed.world_size(), distributed.rank())
    subset = VideoSet([videos.names[v] for v in mine], [videos.frames[v] for v in mine])
    hook = None if on_batch is None else (lambda v, targets, p, t: on_batch(mine[v], targets, p, t))
    local_errors = None if errors is None else errors.remapped(mine)
    local = predict_psnr(ctx, subset, progress and distributed.is_main(), hook, local_errors)
    out: list = [None] * len(videos.names)
    for part in distributed.all_gather_object(list(zip(mine, local))):
        for v, values in part:
            out[v] = values
    return out


@dataclass
class EvalResult:
    metrics: FrameMetrics
    psnr: list[np.ndarray]
    scores: list[np.ndarray]
    labels: list[np.ndarray]  # labels of the predicted frames only (the first clip_len-1 of each video dropped)
    extras: dict[str, list[np.ndarray]] = field(default_factory=dict)  # the method's other per-frame errors

    def as_dict(self, names: Optional[Sequence[str]] = None) -> dict:
        """The frame-level figures of metrics.json.  ``macro_single_class_videos``: the videos the macro AUC could
        not score (one class only), by name when ``names`` (the test set's, in order) is given, else by index."""
        m = self.metrics
        values, labels = np.concatenate(self.psnr), np.concatenate(self.labels).astype(bool)
        single = [names[v] if names is not None else v for v in m.macro.single_class_videos]
        # Mean PSNR of normal and of anomalous frames: a reconstruction model that learnt the identity shows as
        # high PSNR on both and no gap (the known failure of skip connections).
        return {
            "micro_auc": m.micro_auc, "macro_auc": m.macro.value, "eer": m.eer,
            "macro_videos_used": m.macro.videos_used,
            "macro_single_class_videos": single, "macro_rule": m.macro.rule,
            "n_frames": m.n_frames, "n_anomalous": m.n_anomalous,
            "mean_psnr": float(np.mean(values)),
            "mean_psnr_normal": float(np.mean(values[~labels])) if (~labels).any() else float("nan"),
            "mean_psnr_anomalous": float(np.mean(values[labels])) if labels.any() else float("nan"),
        }


class FrameErrorCollector:
    """Keeps a method's per-frame errors beyond PSNR (e.g. Skip-GANomaly's latent error, MAMA's triplet hinges),
    per video, from each batch's prediction, target and the terms the method's ``predict`` returned."""

    def __init__(self, ctx: Inference, videos: VideoSet):
        self.ctx = ctx
        self.lengths = [max(0, n - ctx.cfg.clip_len + 1) for n in videos.counts]
        self.values: dict[str, list[np.ndarray]] = {}
        self.filled: set[int] = set()
        self._video_index: Optional[Sequence[int]] = None

    def remapped(self, videos: Sequence[int]) -> "FrameErrorCollector":
        """This collector, fed with a subset's batches: subset video k is video ``videos[k]`` (torchrun shards)."""
        self._video_index = list(videos)
        return self

    @torch.inference_mode()
    def add(self, v: int, targets: np.ndarray, prediction: torch.Tensor, target: torch.Tensor,
            terms: dict[str, torch.Tensor]) -> None:
        if self._video_index is not None:
            v = self._video_index[v]
        for name, value in self.ctx.frame_errors(prediction, target, terms).items():
            per_video = self.values.setdefault(name, [np.full(n, np.nan) for n in self.lengths])
            per_video[v][targets - (self.ctx.cfg.clip_len - 1)] = value.float().cpu().numpy()
        self.filled.add(v)

    def gathered(self) -> dict[str, list[np.ndarray]]:
        """Every video's values on every rank under torchrun (each rank filled its own videos); itself otherwise."""
        if not distributed.active():
            return self.values
        mine = {name: {v: arrays[v] for v in self.filled} for name, arrays in self.values.items()}
        out: dict[str, list[np.ndarray]] = {}
        for part in distributed.all_gather_object(mine):
            for name, per_video in part.items():
                target = out.setdefault(name, [np.full(n, np.nan) for n in self.lengths])
                for v, array in per_video.items():
                    target[v] = array
        return out


def evaluate(ctx: Inference, test_set: TestSet, progress: bool = True,
             on_batch: Optional[BatchHook] = None) -> EvalResult:
    """Predict (or reconstruct) every scored test frame, score it by the generator's method and compute the
    frame-level metrics.  Methods whose score uses the discriminator (Skip-GANomaly) need it in ``ctx``."""
    # Under torchrun every rank must call this: each predicts a share of the videos and all get every PSNR back;
    # in a plain run it is predict_psnr itself.
    cfg, method = ctx.cfg, ctx.method
    collector = None
    if method.scores_with_discriminator and ctx.discriminator is None:
        raise UserError(f"--model={cfg.model} scores frames with its discriminator, and none was given")
    if method.needs_frame_errors:
        collector = FrameErrorCollector(ctx, test_set.videos)
    values = predict_psnr_sharded(ctx, test_set.videos, progress, on_batch, collector)
    extras = collector.gathered() if collector else {}
    labels = [y[cfg.clip_len - 1:] for y in test_set.labels]
    if method.scores_by_psnr and cfg.score_norm == "video":
        scores = [anomaly_scores(p) for p in values]  # the FFP protocol, bit for bit as metrics.frame_metrics
    else:
        scores = normalise_scores(method.anomaly_values(values, extras, cfg), cfg.score_norm)
    metrics = metrics_of_scores(scores, labels, cfg.macro_single_class)
    return EvalResult(metrics, values, scores, labels, extras)


# --- artifacts ------------------------------------------------------------------------------------------------

def summary_table(result: EvalResult, title: str, pixel=None, pixel_note: str = "",
                  extra_rows: Sequence[tuple[str, str]] = ()) -> str:
    """The printed summary; ``pixel`` (localization.PixelMetrics) or ``pixel_note`` adds the pixel-level rows."""
    d = result.as_dict()
    excluded = len(d["macro_single_class_videos"])
    rule = (f"{excluded} single-class videos excluded" if d["macro_rule"] == "exclude"
            else "every video padded with one 0 and one 1")
    rows = [
        ("frames scored", f"{d['n_frames']} ({d['n_anomalous']} anomalous)"),
        ("micro AUC (FFP protocol)", f"{100 * d['micro_auc']:.2f}%"),
        ("macro AUC", f"{100 * d['macro_auc']:.2f}% over {d['macro_videos_used']} videos ({rule})"),
        ("EER", f"{100 * d['eer']:.2f}%"),
        ("mean PSNR", f"{d['mean_psnr']:.2f} dB (normal frames {d['mean_psnr_normal']:.2f}, anomalous "
                      f"{d['mean_psnr_anomalous']:.2f})"),
    ]
    if pixel is not None:
        rule = f"UCSD criterion, >= {100 * pixel.coverage:.0f}% of anomalous pixels, map sigma {pixel.sigma:g} px"
        rows += [("pixel-level AUC", f"{100 * pixel.auc:.2f}% ({rule}; {pixel.n_frames} frames, "
                                     f"{pixel.n_anomalous} anomalous)"),
                 ("pixel-level EER", f"{100 * pixel.eer:.2f}%")]
    elif pixel_note:
        rows.append(("pixel-level", pixel_note))
    rows += list(extra_rows)
    width = max(len(k) for k, _ in rows)
    return "\n".join([title] + [f"  {k:<{width}}  {v}" for k, v in rows])


def pyplot():
    """matplotlib's pyplot on the headless Agg backend (no display on servers)."""
    import matplotlib  # deferred: matplotlib loads only when plots are written
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(figure, path: Path) -> None:
    plt = pyplot()

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    with atomic_path(path, suffix=".png") as tmp:
        tmp.write_bytes(buffer.getvalue())


def _plot_roc(result: EvalResult, path: Path) -> None:
    from sklearn.metrics import roc_curve  # deferred: scikit-learn loads in about a second

    plt = pyplot()
    fpr, tpr, _ = roc_curve(np.concatenate(result.labels), np.concatenate(result.scores))
    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    axis.plot(fpr, tpr, label=f"micro AUC {100 * result.metrics.micro_auc:.2f}%")
    axis.plot([0, 1], [0, 1], "--", color="grey", linewidth=0.8)
    axis.set(xlabel="false positive rate", ylabel="true positive rate", title="frame-level ROC")
    axis.legend(loc="lower right")
    save_figure(figure, path)


def _plot_video(name: str, scores: np.ndarray, labels: np.ndarray, first_frame: int, path: Path) -> None:
    plt = pyplot()
    frames = np.arange(first_frame, first_frame + len(scores))
    figure, axis = plt.subplots(figsize=(7, 2.6))
    axis.fill_between(frames, 0, labels, step="mid", color="tab:red", alpha=0.2, label="anomalous (ground truth)")
    axis.plot(frames, scores, color="tab:blue", label="anomaly score")
    axis.set(xlabel="frame", ylabel="score", ylim=(-0.02, 1.02), title=f"test video {name}")
    axis.legend(loc="upper right", fontsize=7)
    save_figure(figure, path)


def write_results(folder: Path, result: EvalResult, test_set: TestSet, cfg: Config, extra: dict,
                  plots: bool = True, fix: str = "choose another folder") -> None:
    """metrics.json, scores.csv (one row per predicted frame), scores.npz, config.json, roc.png, video_<name>.png.
    A failed write is one ioutil.WriteFailed line ending with ``fix``."""
    ensure_writable_dir(folder, "results folder", fix)
    metrics = {**result.as_dict(test_set.videos.names), **extra, "label_source": str(test_set.label_source)}
    atomic_write_text(folder / "metrics.json", json.dumps(metrics, indent=2) + "\n", fix=fix)
    atomic_write_text(folder / "config.json", cfg.to_json() + "\n", fix=fix)
    rows = io.StringIO()
    writer = csv.writer(rows)
    extra_names = sorted(result.extras)
    writer.writerow(["video", "frame", "psnr", *extra_names, "anomaly_score", "label"])
    for v, (name, values, scores, labels) in enumerate(zip(test_set.videos.names, result.psnr, result.scores,
                                                           result.labels)):
        for k, (p, s, y) in enumerate(zip(values, scores, labels)):
            extra = [f"{result.extras[e][v][k]:.6g}" for e in extra_names]
            writer.writerow([name, k + cfg.clip_len - 1, f"{p:.4f}", *extra, f"{s:.6f}", int(y)])
    atomic_write_text(folder / "scores.csv", rows.getvalue(), fix=fix)
    with atomic_path(folder / "scores.npz", suffix=".npz", fix=fix) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, psnr=np.concatenate(result.psnr), score=np.concatenate(result.scores),
                     **{name: np.concatenate(per_video) for name, per_video in result.extras.items()},
                     label=np.concatenate(result.labels),
                     video_lengths=np.array([len(s) for s in result.scores]))
    if plots:
        _plot_roc(result, folder / "roc.png")
        for name, scores, labels in zip(test_set.videos.names, result.scores, result.labels):
            _plot_video(name, scores, labels, cfg.clip_len - 1, folder / f"video_{name}.png")

