"""The method contract (ffpvad/methods/base.py), checked on every registered method by one parametrised test: build, one
training step that gives every trainable parameter a gradient, save and exact resume, and evaluation that scores
one value per predicted frame.  A generator registered from this file alone trains through the shared loop."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ffpvad import config
from ffpvad.cli import resolve
from ffpvad.data.dataset import TestSet
from ffpvad.training.engine import Trainer, load_resume_state, stage_two_config
from ffpvad.evaluation.evaluate import evaluate
from ffpvad.methods import METHODS, Method, first_stage, trainable_generator
from ffpvad.models import GENERATORS, register_generator

SMALL = ("data_root", "cache_dir", "weights_dir", "results_dir", "log_dir", "img_size", "base_channels", "batch_size",
         "val_interval", "save_interval", "log_interval", "tensorboard", "device")


def config_for(name: str, small_cfg, iters: int):
    base, stage = first_stage(name)
    model = trainable_generator(base, config.preset("toy").replace(img_size=32, base_channels=8, semantic="none",
                                                                   flownet="none"))
    cfg = resolve({"dataset": "toy", "model": model, "semantic": "none"})
    cfg = cfg.replace(**{k: getattr(small_cfg, k) for k in SMALL}, iters=iters)
    if stage != "generator":  # a later stage starts from a checkpoint of the stage before it
        Trainer(cfg.replace(iters=1), progress=False).fit()
        cfg = stage_two_config(cfg.replace(stage=stage, pretrained="latest_toy"), {"stage", "pretrained"})
    return cfg


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_keeps_the_contract(name, small_cfg):
    method = METHODS.get(name)
    assert isinstance(method, Method) and method.name == name and method.loss_names

    # One step: the method's losses, and a gradient for every trainable parameter of what it trains.
    cfg = config_for(name, small_cfg, iters=4)
    trainer = Trainer(cfg, progress=False)
    assert trainer.method is method
    before = {k: v.clone() for k, v in trainer.generator.state_dict().items()}
    losses = trainer.train_step(*trainer.next_clips())
    assert set(losses.as_dict()) == {*method.loss_names, "psnr"}
    assert all(np.isfinite(v) for v in losses.as_dict().values())
    trained = [trainer.generator] + ([trainer.discriminator] if method.trains_discriminator else [])
    for network in trained:
        starved = [n for n, p in network.named_parameters() if p.requires_grad and
                   (p.grad is None or p.grad.abs().sum() == 0)]
        assert not starved, f"{name}: trainable parameters without gradient: {starved[:5]}"
    assert any(not torch.equal(v, before[k]) for k, v in trainer.generator.state_dict().items())

    # Save and exact resume: 4 steps straight equal 2 steps, a checkpoint, and 2 more.
    straight = Trainer(cfg, progress=False).fit()
    Trainer(cfg.replace(iters=2), progress=False).fit()
    latest = trainer.checkpoint_path("latest").stem
    resumed_cfg, state = load_resume_state(cfg.replace(resume=latest, pretrained=""), explicit={"iters"})
    tail = Trainer(resumed_cfg, resume_from=state, progress=False).fit().history
    assert [s.as_dict() for s in tail] == [s.as_dict() for s in straight.history[2:]]

    # Evaluation: one finite score per predicted frame of every test video.
    test_set = TestSet.load(cfg)
    result = evaluate(trainer.inference, test_set, progress=False)
    expected = [max(0, n - cfg.clip_len + 1) for n in test_set.videos.counts]
    assert [len(s) for s in result.scores] == [len(p) for p in result.psnr] == expected
    assert all(np.isfinite(s).all() for s in result.scores)
    assert 0.0 <= result.metrics.micro_auc <= 1.0


class ThrowawayGenerator(nn.Module):
    """The smallest prediction generator: one convolution from the stacked input frames to a frame."""

    def __init__(self, n_inputs: int):
        super().__init__()
        self.conv = nn.Conv2d(3 * n_inputs, 3, 3, padding=1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(frames))


@pytest.fixture
def throwaway():
    register_generator("throwaway")(lambda cfg: ThrowawayGenerator(cfg.n_inputs))
    yield "throwaway"
    GENERATORS.unregister("throwaway")


def test_a_generator_registered_from_a_test_file_trains_a_step(throwaway, small_cfg):
    with pytest.raises(ValueError, match="registered twice"):
        register_generator(throwaway)(lambda cfg: ThrowawayGenerator(cfg.n_inputs))
    cfg = small_cfg.replace(model=throwaway, iters=1)
    trainer = Trainer(cfg, progress=False)
    assert isinstance(trainer.generator, ThrowawayGenerator) and trainer.method is METHODS.get("prediction")
    losses = trainer.train_step(*trainer.next_clips())
    assert np.isfinite(losses.g_total) and trainer.generator.conv.weight.grad.abs().sum() > 0
