"""Evaluate a trained generator on a test set: ``python eval.py --dataset=ped2 --trained_model=g_best_auc_ped2``.

Writes results/<run>/ (metrics.json, scores.csv, scores.npz, config.json, roc.png, video_<name>.png) and prints a
summary.  ``--model=copylast`` with no checkpoint evaluates the trivial copy-the-last-frame baseline.

Pixel level (ffpvad/evaluation/localization.py): with pixel masks, the smoothed prediction-error map is scored by the UCSD criterion
and pixel-level AUC and EER are reported beside the frame-level ones.  Masks come from --pixel_masks=<folder> (a
folder of <video>.npy, or the official UCSD Test folder with its Test0NN_gt folders) or, without the flag, from
the prepared layout <data_root>/<dataset>/testing/pixel_masks/; --pixel_sigma=<px> sets the map's smoothing.

CPU speed: --quantize=int8 evaluates an int8 copy of the generator (ffpvad/models/quantize.py), calibrated on 32 clips of
the training split (no test frame, no label), in place of bf16 autocast: 2.0x the frames per second of the bf16
default at 256x256 on the project's CPU, but it changes the AUC (docs/speed.md 'int8 evaluation' gives Ped2's with
and without it),
so it is opt-in.

Causal score: when the checkpoint has a calibration (<checkpoint stem>.calibration.json, written by detect.py), the
summary adds the causal detector's AUC and, at --fpr=<rate> (0.01), the share of normal and anomalous test frames it
flags: the real false-alarm rate of the live detector against its target.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from ffpvad.training import distributed, selection
from ffpvad.evaluation.calibration import Calibration, benchmark_rates, calibration_path, file_sha256
from ffpvad.checkpoint import architecture_conflicts, load_networks, read_for_scoring, resolve_checkpoint
from ffpvad.cli import check_names, parse_command_line
from ffpvad.config import NON_NEGATIVE, Config, Flag, Range, fields_of
from ffpvad.data.dataset import TestSet, TrainClips, VideoSet, evenly_spaced, to_model_range
from ffpvad.errors import UserError, run_cli
from ffpvad.evaluation.evaluate import evaluate, summary_table, write_results
from ffpvad.ioutil import ensure_writable_dir
from ffpvad.evaluation.localization import DEFAULT_SIGMA, PixelAccumulator, pixel_mask_source
from ffpvad.inference import PLAIN, Inference
from ffpvad.methods import method_for
from ffpvad.models import build_generator, is_trainable
from ffpvad.models.quantize import quantize_int8
from ffpvad.runtime import resolve_device

# Flags that may differ from the checkpoint's config at evaluation time (data location, hardware, outputs): the
# fields of kind "eval_override" in ffpvad/config.py.
EVAL_OVERRIDES = fields_of("eval_override")

QUANTIZE_CHOICES = ("off", "int8")
# eval.py's own flags (not Config fields): parsed beside them, returned apart (config.parse_command_line).
EXTRA_FLAGS = (
    Flag("pixel_masks", str, "", "pixel masks for pixel-level AUC and EER: a folder of <video>.npy, or the official "
         "UCSD Test folder with its Test0NN_gt folders; empty = <data_root>/<dataset>/testing/pixel_masks/ when "
         "present", group="eval.py only"),
    Flag("pixel_sigma", float, DEFAULT_SIGMA, "Gaussian smoothing of the pixel-level error map, in pixels of the "
         "model's resolution (localization.DEFAULT_SIGMA)", group="eval.py only", range=NON_NEGATIVE),
    Flag("fpr", float, 0.01, "target false-alarm rate of the causal detector (when the checkpoint has a "
         "calibration)", group="eval.py only", range=Range(0, 1, low_open=True, high_open=True,
                                                       note="a false-alarm rate such as 0.01")),
    Flag("quantize", str, "off", "int8: evaluate an int8 copy of the generator on the CPU, calibrated on "
         "training clips (changes the AUC)", group="eval.py only", choices=QUANTIZE_CHOICES),
)
CALIBRATION_CLIPS = 32
RESULTS_FIX = "choose another with --results_dir"


def load_model(cfg: Config, explicit: set[str]):
    """(config, generator, discriminator or None, run name, checkpoint description) for a checkpoint or a
    parameter-free baseline; the discriminator is loaded when the method's score uses it (Skip-GANomaly).

    The checkpoint's config is used, with the evaluation-time flags given (data, hardware, outputs, score) taking
    effect; an architecture flag given explicitly that contradicts the checkpoint is an error, never dropped."""
    if not cfg.trained_model and "model" in explicit:
        generator = build_generator(cfg)
        if not is_trainable(generator):
            return cfg, generator, None, f"{cfg.dataset}_{cfg.model}", f"baseline '{cfg.model}' (no training)"
        raise UserError(f"--model={cfg.model} needs weights: pass --trained_model=<name or path>")
    name = cfg.trained_model or f"g_best_auc_{cfg.dataset}"
    path = resolve_checkpoint(name, cfg.weights_dir)
    state, stored = read_for_scoring(path)
    fixed = tuple(k for k in fields_of("architecture") if k not in EVAL_OVERRIDES)
    conflicts = architecture_conflicts(stored, cfg, explicit, fixed)
    if conflicts:
        raise UserError(f"{path} was trained with other settings than {', '.join(conflicts)}: drop the flag (the "
                        f"checkpoint's architecture is used) or pass another --trained_model")
    cfg = stored.replace(**{k: getattr(cfg, k) for k in explicit if k in EVAL_OVERRIDES})
    generator, discriminator = load_networks(path, state, cfg, method_for(cfg).scores_with_discriminator)
    step = state.get("step", "?")
    path = Path(path)
    run = path.stem if path.parent.name == "weights" else f"{path.parent.name}_{path.stem}"
    return cfg, generator, discriminator, run, f"{path} (step {step}, trained on {stored.dataset})"


def calibration_clips(cfg: Config, n_clips: int = CALIBRATION_CLIPS, n_videos: int = 8):
    """uint8 (N, clip_len, H, W, 3): ``n_clips`` clips spread evenly over ``n_videos`` training videos (themselves
    spread evenly over the split, so a large training set is not decoded in full): what --quantize=int8 calibrates
    its activation ranges on.  Training frames only: no test frame, no label."""
    try:
        clips = TrainClips(VideoSet.load(cfg, "training", max_videos=n_videos), cfg.clip_len)
    except UserError as exc:
        raise UserError(f"--quantize=int8 calibrates on training clips, and they cannot be read: {exc} "
                        f"(or use --quantize=off)") from None
    return clips.batch(evenly_spaced(len(clips), n_clips))


def calibration_batches(cfg: Config, clips, batch_size: int = 4):
    """The generator inputs of ``clips`` (from calibration_clips), in the model range, ``batch_size`` at a time."""
    split = method_for(cfg).split
    return [split(to_model_range(clips[lo:lo + batch_size]))[0] for lo in range(0, len(clips), batch_size)]


def causal_rates(checkpoint_name: str, weights_dir: str, result, fpr: float,
                 score: str = "psnr") -> tuple[dict, list[tuple[str, str]]]:
    """The causal detector of detect.py on this test set, when the checkpoint has a calibration (made by detect.py
    --norm=causal, or --calibrate): its AUC and, at the target false-alarm rate ``fpr`` (--fpr, 0.01), how many
    normal and anomalous test frames it flags."""
    checkpoint = resolve_checkpoint(checkpoint_name, weights_dir)
    path = calibration_path(checkpoint)
    if not path.exists():
        return {}, [("causal score", f"no calibration ({path}; detect.py --norm=causal makes it)")]
    calib = Calibration.load(path)
    if calib.checkpoint_sha256 != file_sha256(checkpoint):
        return {}, [("causal score", f"{path} was made for another checkpoint (detect.py --calibrate)")]
    if calib.score != score:
        return {}, [("causal score", f"{path} is in --score={calib.score}, not --score={score} "
                                     f"(detect.py --score={score} --calibrate makes one)")]
    rates = benchmark_rates(calib, np.concatenate(result.psnr), np.concatenate(result.labels), fpr)
    where = "training frames, optimistic" if calib.optimistic else "held-out normal frames"
    return rates, [
        ("causal AUC", f"{100 * rates['causal_auc']:.2f}% (calibrated on {calib.n_frames} {where}; no min-max)"),
        (f"causal @ fpr {fpr:g}", f"flags {100 * rates['causal_normal_flagged']:.2f}% of normal and "
                                  f"{100 * rates['causal_anomalous_flagged']:.2f}% of anomalous test frames "
                                  f"(PSNR < {rates['causal_psnr_threshold']:.2f} dB)"),
    ]


def check_int8(cfg: Config, baseline: bool, discriminator, explicit: set[str]) -> None:
    """--quantize=int8 applies: a CPU run of a trained generator that scores without its discriminator."""
    device = resolve_device(cfg.device)
    if device.type != "cpu":
        raise UserError(f"--quantize=int8 runs on the CPU only (its int8 kernels are CPU kernels): "
                        f"add --device=cpu or use --quantize=off on {device}")
    if baseline:
        raise UserError(f"--quantize=int8: the baseline --model={cfg.model} has no weights to quantize")
    if discriminator is not None:
        raise UserError(f"--quantize=int8 quantizes the generator only, and --model={cfg.model} also scores "
                        f"with its discriminator: use --quantize=off")
    if "amp" in explicit:
        print(f"note: --amp={cfg.amp} is unused: --quantize=int8 runs int8 kernels in place of autocast")


def main(argv: Sequence[str] | None = None) -> int:
    cfg, explicit, extra = parse_command_line(argv, "eval.py", __doc__, EXTRA_FLAGS)
    quantize = extra["quantize"]
    checkpoint_name, weights_dir = cfg.trained_model or f"g_best_auc_{cfg.dataset}", cfg.weights_dir  # as load_model
    writes = distributed.is_main()  # torchrun: rank 0 writes the results (RANK is known before the group is up)
    if writes and "results_dir" in explicit:  # before the model loads; without the flag the checkpoint's is used
        ensure_writable_dir(cfg.results_dir, "results folder", RESULTS_FIX)
    cfg, generator, discriminator, run, described = load_model(cfg, explicit)
    check_names(cfg)  # again on the checkpoint's config: its --model decides whether --score applies
    if cfg.score != "psnr":
        run += f"_{cfg.score}"  # beside the PSNR results of the same checkpoint, not over them
    if writes:  # the run folder write_results fills, proven writable before any frame is predicted
        ensure_writable_dir(Path(cfg.results_dir) / (f"{run}_int8" if quantize == "int8" else run),
                            "results folder", RESULTS_FIX)
    distributed.init(resolve_device(cfg.device))  # torchrun: each rank predicts a share of the test videos
    baseline = described.startswith("baseline")
    if quantize == "int8":
        check_int8(cfg, baseline, discriminator, explicit)
    # int8 kernels replace autocast and pick their own layout: the float generator is set up plain, then quantized
    ctx = Inference.set_up(cfg, generator, discriminator, compute=PLAIN if quantize == "int8" else None)
    cfg = ctx.cfg
    if quantize == "int8":
        clips = distributed.in_turn(lambda: calibration_clips(cfg))  # torchrun: rank 0 builds the frame cache
        ctx = replace(ctx, generator=quantize_int8(ctx.generator, calibration_batches(cfg, clips), cfg.model))
        described += f"; int8 (calibrated on {len(clips)} training clips)"
        run += "_int8"
    test_set = distributed.in_turn(lambda: TestSet.load(cfg))  # torchrun: rank 0 builds the frame cache first
    videos = test_set.videos
    masks_of, mask_where = pixel_mask_source(cfg.data_root, cfg.dataset, videos.names, videos.counts,
                                             extra.get("pixel_masks", ""))
    pixels = PixelAccumulator(masks_of, extra.get("pixel_sigma", DEFAULT_SIGMA)) if masks_of else None
    result = evaluate(ctx, test_set, on_batch=pixels.add if pixels else None)
    if pixels is not None and distributed.active():  # torchrun: the pixel-level values of every rank's videos
        pixels.values, pixels.labels = distributed.concat_across_ranks(pixels.values, pixels.labels)
    if not distributed.is_main():
        return 0
    pixel = pixels.result() if pixels else None
    checkpoint = None if baseline else resolve_checkpoint(checkpoint_name, weights_dir)
    info = {"model": described, "dataset": cfg.dataset, "checkpoint": checkpoint and str(checkpoint),
            "frame_score": cfg.score,
            "selection": selection.describe(checkpoint) if checkpoint else "none (no training)",
            **({**pixel.as_dict(), "pixel_masks": mask_where} if pixel else {"pixel_level": mask_where})}
    if baseline:
        causal, causal_rows = {}, []
    elif quantize == "int8":  # the calibration's PSNR threshold is the float generator's; int8 predicts 1.5-4 dB lower
        causal, causal_rows = {}, [("causal score", "not with --quantize=int8 (calibrated for the float generator)")]
    else:
        causal, causal_rows = causal_rates(checkpoint_name, weights_dir, result, extra.get("fpr", 0.01), cfg.score)
    folder = Path(cfg.results_dir) / run
    # printed first: a results folder that fills up while it is written still leaves the metrics on the screen
    print(summary_table(result, f"{cfg.dataset}: {described}; labels from {test_set.label_source}", pixel,
                        "" if pixel else mask_where, causal_rows), flush=True)
    write_results(folder, result, test_set, cfg, {**info, **causal}, cfg.plots, fix=RESULTS_FIX)
    print(f"wrote {folder}/")
    return 0


def cli() -> None:
    """The console script."""
    run_cli(main)


if __name__ == "__main__":
    cli()
