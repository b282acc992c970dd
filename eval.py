"""Evaluate a trained generator on a test set: ``python eval.py --dataset=ped2 --trained_model=g_best_auc_ped2``.

Writes results/<run>/ (metrics.json, scores.csv, scores.npz, config.json, roc.png, video_<name>.png) and prints a
summary.  ``--model=copylast`` with no checkpoint evaluates the trivial copy-the-last-frame baseline.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from config import Config, config_from_dict, parse_args
from errors import UserError, run_cli

# Flags that may differ from the checkpoint's config at evaluation time (data location, hardware, outputs).
EVAL_OVERRIDES = ("dataset", "data_root", "labels", "cache_dir", "device", "amp", "channels_last",
                  "eval_batch_size", "num_threads", "results_dir", "weights_dir", "macro_single_class", "plots")


def load_model(cfg: Config, explicit: set[str]):
    """(config, generator, run name, checkpoint description) for a checkpoint or a parameter-free baseline."""
    from checkpoint import load_checkpoint, resolve_checkpoint
    from models import build_generator, is_trainable

    if not cfg.trained_model and "model" in explicit:
        generator = build_generator(cfg)
        if not is_trainable(generator):
            return cfg, generator, f"{cfg.dataset}_{cfg.model}", f"baseline '{cfg.model}' (no training)"
        raise UserError(f"--model={cfg.model} needs weights: pass --trained_model=<name or path>")
    name = cfg.trained_model or f"g_best_auc_{cfg.dataset}"
    path = resolve_checkpoint(name, cfg.weights_dir)
    state = load_checkpoint(path)
    stored = config_from_dict(state["config"])
    cfg = stored.replace(**{k: getattr(cfg, k) for k in explicit if k in EVAL_OVERRIDES})
    generator = build_generator(cfg)
    try:
        generator.load_state_dict(state["generator"])
    except (RuntimeError, KeyError) as exc:
        raise UserError(f"{path}: generator weights do not match --model={cfg.model} ({exc})") from None
    step = state.get("step", "?")
    path = Path(path)
    run = path.stem if path.parent.name == "weights" else f"{path.parent.name}_{path.stem}"
    return cfg, generator, run, f"{path} (step {step}, trained on {stored.dataset})"


def main(argv: Sequence[str] | None = None) -> int:
    cfg, explicit = parse_args(argv, "eval.py", __doc__)
    import torch  # loads only once the flags are known to be good

    from dataset import TestSet
    from evaluation import evaluate, summary_table, write_results
    from runtime import configure_threads, resolve_amp, resolve_device, use_channels_last

    cfg, generator, run, described = load_model(cfg, explicit)
    configure_threads(cfg)
    device = resolve_device(cfg.device)
    channels_last = use_channels_last(cfg, device)
    generator = generator.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    test_set = TestSet.load(cfg)
    result = evaluate(generator, test_set, cfg, device, resolve_amp(cfg, device), channels_last)
    folder = Path(cfg.results_dir) / run
    write_results(folder, result, test_set, cfg, {"model": described, "dataset": cfg.dataset}, cfg.plots)
    print(summary_table(result, f"{cfg.dataset}: {described}; labels from {test_set.label_source}"))
    print(f"wrote {folder}/")
    return 0


if __name__ == "__main__":
    run_cli(main)
