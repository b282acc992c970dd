"""Micro AUC of untrained (randomly initialised) generators: what a broken training loop would score.

    python tools/untrained_baseline.py --dataset=toy --seeds=3       (any train.py/eval.py flag is accepted)
"""
from __future__ import annotations

import argparse
from pathlib import Path


from ffpvad.cli import parse_args
from ffpvad.errors import run_cli


def main() -> int:
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--seeds", type=int, default=3)
    known, rest = extra.parse_known_args()
    cfg, _ = parse_args(rest, "untrained_baseline.py", __doc__)
    import torch

    from ffpvad.data.dataset import TestSet
    from ffpvad.evaluation.evaluate import evaluate
    from ffpvad.methods import method_for
    from ffpvad.models import build_discriminator, build_generator
    from ffpvad.inference import Inference
    from ffpvad.runtime import resolve_amp, resolve_device

    device = resolve_device(cfg.device)
    test_set = TestSet.load(cfg)
    for seed in range(known.seeds):
        torch.manual_seed(seed)
        generator = build_generator(cfg).to(device)
        discriminator = build_discriminator(cfg).to(device) if method_for(cfg).scores_with_discriminator else None
        ctx = Inference(generator, cfg, device, resolve_amp(cfg, device), discriminator=discriminator)
        result = evaluate(ctx, test_set, progress=False)
        print(f"{cfg.dataset} untrained {cfg.model} (width {cfg.base_channels}, {cfg.img_size}px), seed {seed}: "
              f"micro AUC {100 * result.metrics.micro_auc:.2f}%")
    return 0


if __name__ == "__main__":
    run_cli(main)
