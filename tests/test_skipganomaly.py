"""Skip-GANomaly: networks, losses, score, the reconstruction method in the shared loop, evaluation and resume."""
import copy
import json

import numpy as np
import pytest
import torch

from ffpvad.losses import skipganomaly as sg
from ffpvad.cli import parse_args
from ffpvad.training.engine import Trainer, load_resume_state
from ffpvad.errors import UserError
from ffpvad.methods import SkipGANomalyMethod, method_for
from ffpvad.evaluation.metrics import normalise_scores
from ffpvad.models.skipganomaly import DCGANDiscriminator, SkipGANomalyGenerator
from test_training import cli_flags, run


@pytest.fixture
def sg_cfg(small_cfg):
    cfg, _ = parse_args(["--dataset=toy", "--model=skipganomaly"], "t", "")
    keep = ("data_root", "cache_dir", "weights_dir", "results_dir", "log_dir", "img_size", "base_channels",
            "batch_size", "iters", "val_interval", "save_interval", "log_interval", "tensorboard", "device")
    return cfg.replace(**{k: getattr(small_cfg, k) for k in keep})


@pytest.mark.parametrize("size,depth", [(32, 5), (64, 6)])
def test_shapes_depth_and_one_pixel_bottleneck(size, depth):
    generator, discriminator = SkipGANomalyGenerator(size, 3, 8), DCGANDiscriminator(size, 3, 8)
    assert generator.depth == depth
    bottleneck = []
    innermost = [m for m in generator.modules() if getattr(m, "model", None) is not None][-1]
    innermost.model[0].register_forward_hook(lambda m, i, o: bottleneck.append(o.shape))
    x = torch.rand(2, 3, size, size) * 2 - 1
    out = generator(x)
    assert out.shape == x.shape and out.abs().max() <= 1
    assert bottleneck == [(2, 64, 1, 1)]  # 8 ngf at 1x1
    logit, features = discriminator(out)
    assert logit.shape == (2,) and features.shape == (2, 100, 1, 1)


def test_authors_sizes_at_256_pixels():
    # pix2pix's unet_256 (8 levels, ngf 64) has 54.41 M parameters; D is DCGAN's down to 4x4, then the 100-d conv.
    assert sum(p.numel() for p in SkipGANomalyGenerator(256).parameters()) == 54_413_955
    widths = [m.out_channels for m in DCGANDiscriminator(256).features if isinstance(m, torch.nn.Conv2d)]
    assert widths == [64, 128, 256, 512, 1024, 2048, 100]


def test_skip_carries_the_activated_input():
    # pix2pix's in-place LeakyReLU means the concatenated skip is LeakyReLU(x), not x; ours writes that out.
    generator = SkipGANomalyGenerator(32, 3, 4)
    level = generator.net.model[1]  # the block under the outermost conv
    x = torch.randn(1, 4, 16, 16)
    out = level(x)
    assert torch.equal(out[:, :4], torch.nn.functional.leaky_relu(x, 0.2))


def test_loss_and_score_formulas_on_hand_worked_numbers():
    x = torch.tensor([[0.0, 1.0], [2.0, -1.0]]).view(1, 1, 2, 2)
    y = torch.tensor([[1.0, 1.0], [0.0, -1.0]]).view(1, 1, 2, 2)
    assert sg.contextual_loss(y, x).item() == pytest.approx((1 + 0 + 2 + 0) / 4)
    assert sg.latent_loss(x, y).item() == pytest.approx((1 + 0 + 4 + 0) / 4)
    assert sg.per_sample_mse(x, y).tolist() == [pytest.approx(1.25)]
    # BCE with logits: log(1 + e^-z) for the real label; at z = 0 both terms are log 2.
    assert sg.adversarial_loss(torch.zeros(3)).item() == pytest.approx(np.log(2))
    assert sg.discriminator_loss(torch.zeros(3), torch.zeros(3)).item() == pytest.approx(2 * np.log(2))
    # Eq. 6 with lambda 0.9: 0.9 * 0.2 + 0.1 * 3 = 0.48
    assert sg.anomaly_score(np.array([0.2]), np.array([3.0]), 0.9) == pytest.approx([0.48])
    method = SkipGANomalyMethod()
    cfg, _ = parse_args(["--model=skipganomaly", "--score_lambda=0.5"], "t", "")
    values = method.anomaly_values([np.zeros(2)], {"reconstruction_mse": [np.array([1.0, 3.0])],
                                                   "latent_mse": [np.array([5.0, 1.0])]}, cfg)
    assert values[0].tolist() == [3.0, 2.0]


def test_per_video_and_global_normalisation():
    values = [np.array([1.0, 3.0]), np.array([2.0, 4.0, 3.0])]
    per_video = normalise_scores(values, "video")
    assert [v.tolist() for v in per_video] == [[0.0, 1.0], [0.0, 1.0, 0.5]]
    overall = normalise_scores(values, "global")  # (v - 1) / 3 over all five values
    assert [v.tolist() for v in overall] == [[0.0, pytest.approx(2 / 3)], [pytest.approx(1 / 3), 1.0, pytest.approx(2 / 3)]]


def test_model_preset_sits_between_dataset_preset_and_flags():
    cfg, _ = parse_args(["--dataset=ped2", "--model=skipganomaly"], "t", "")
    assert (cfg.discriminator, cfg.flownet, cfg.lr_g, cfg.lr_d, cfg.adam_beta1) == ("dcgan", "none", 2e-4, 2e-4, 0.5)
    assert (cfg.lam_adv, cfg.lam_con, cfg.lam_lat, cfg.d_reinit_below, cfg.lr_decay_gamma) == (1, 50, 1, 1e-5, 1)
    assert cfg.dataset == "ped2" and cfg.img_size == 256
    cfg, _ = parse_args(["--dataset=ped2", "--model=skipganomaly", "--lam_con=40", "--lr_g=1e-3"], "t", "")
    assert (cfg.lam_con, cfg.lr_g, cfg.lr_d) == (40, 1e-3, 2e-4)
    ffp, _ = parse_args(["--dataset=ped2"], "t", "")
    assert (ffp.discriminator, ffp.lr_d, ffp.adam_beta1, ffp.d_reinit_below) == ("pixel", 1e-5, 0.9, 0.0)


def test_every_parameter_gets_a_gradient_in_the_shared_loop(sg_cfg):
    trainer = Trainer(sg_cfg, progress=False)
    assert isinstance(trainer.discriminator, DCGANDiscriminator) and trainer.opt_g.defaults["betas"][0] == 0.5
    ids = trainer.sampler.next_batch()
    before = copy.deepcopy(trainer.generator.state_dict())
    losses = trainer.train_step(ids, trainer.train_clips.batch(ids))
    assert set(losses.as_dict()) == {"g_total", "g_adv", "g_con", "g_lat", "d_loss", "d_reinit", "psnr"}
    for net in (trainer.generator, trainer.discriminator):
        starved = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
        assert not starved
    assert any(not torch.equal(v, before[k]) for k, v in trainer.generator.state_dict().items())
    # the generator's input is the target frame itself (reconstruction), not the clip
    clip = torch.rand(2, sg_cfg.clip_len, 3, 8, 8)
    inputs, target = method_for(sg_cfg).split(clip)
    assert torch.equal(inputs, clip[:, -1]) and torch.equal(target, clip[:, -1])


def test_discriminator_is_reinitialised_below_the_threshold(sg_cfg):
    def one_step(threshold):
        trainer = Trainer(sg_cfg.replace(d_reinit_below=threshold), progress=False)  # same seed: same start
        ids = trainer.sampler.next_batch()
        return trainer, trainer.train_step(ids, trainer.train_clips.batch(ids))

    reinit, reinit_losses = one_step(1e9)  # every loss counts as "D won"
    kept, kept_losses = one_step(0.0)  # never
    assert (reinit_losses.d_reinit, kept_losses.d_reinit) == (1.0, 0.0)
    assert reinit_losses.d_loss == kept_losses.d_loss  # the same step, then D re-drawn
    for (name, a), b in zip(reinit.generator.state_dict().items(), kept.generator.state_dict().values()):
        assert torch.equal(a, b), name  # G untouched
    a, b = reinit.discriminator.features[0].weight.detach(), kept.discriminator.features[0].weight.detach()
    assert float((a - b).abs().mean()) > 0.005  # fresh N(0, 0.02) values, not the stepped ones (Adam moves 2e-4)
    assert abs(float(a.std()) - 0.02) < 0.005


def test_trains_and_evaluates_from_the_command_line(sg_cfg, tmp_path):
    flags = cli_flags(sg_cfg) + ["--dataset=toy", "--model=skipganomaly", "--img_size=32", "--base_channels=8"]
    trained = run("train.py", *flags, "--iters=4", "--val_interval=2", "--batch_size=4")
    assert trained.returncode == 0, trained.stderr
    assert "WITHOUT the flow loss" not in trained.stdout  # a reconstruction method has no flow loss to miss
    for norm in ("video", "global"):
        evaluated = run("eval.py", *cli_flags(sg_cfg), "--dataset=toy", "--trained_model=g_best_auc_toy",
                        f"--score_norm={norm}", f"--results_dir={tmp_path / norm}")
        assert evaluated.returncode == 0, evaluated.stderr
        assert "normal frames" in evaluated.stdout and "anomalous" in evaluated.stdout
        folder = tmp_path / norm / "g_best_auc_toy"
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["n_frames"] == 10 * (160 - 4)  # the frames FFP scores (clip_len 5): AUCs compare
        assert np.isfinite(metrics["mean_psnr_normal"]) and np.isfinite(metrics["mean_psnr_anomalous"])
        header = (folder / "scores.csv").read_text().splitlines()[0]
        assert header == "video,frame,psnr,latent_mse,reconstruction_mse,anomaly_score,label"
        scores = np.load(folder / "scores.npz")
        anomaly = 0.9 * scores["reconstruction_mse"] + 0.1 * scores["latent_mse"]
        lengths = np.cumsum(scores["video_lengths"])[:-1]
        expected = np.concatenate(normalise_scores(np.split(anomaly, lengths), norm))
        assert np.allclose(scores["score"], expected)
    video, global_ = (json.loads((tmp_path / n / "g_best_auc_toy" / "metrics.json").read_text())["micro_auc"]
                      for n in ("video", "global"))
    assert video != global_


@pytest.mark.parametrize("flags,message", [
    (["--img_size=48"], "power-of-two --img_size"),
    (["--flownet=spynet"], "has no flow loss"),
    (["--discriminator=pixel"], "needs its DCGAN discriminator"),
    (["--model=ffp", "--discriminator=dcgan"], "--discriminator=dcgan is Skip-GANomaly's"),
])
def test_bad_settings_are_one_clear_line(sg_cfg, flags, message):
    result = run("train.py", *cli_flags(sg_cfg), "--dataset=toy", "--model=skipganomaly", "--iters=1", *flags)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr


def test_detect_refuses_a_reconstruction_checkpoint(sg_cfg, tmp_path):
    from ffpvad.commands import detect
    Trainer(sg_cfg.replace(iters=1), progress=False).fit()
    args = detect.build_parser().parse_args(["--video=x.mp4", f"--trained_model={tmp_path / 'weights' / 'latest_toy.pth'}"])
    with pytest.raises(UserError, match="reconstruction method: detect.py runs frame-prediction models"):
        detect.load_generator(args)
