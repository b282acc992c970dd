"""MAMA: the F2LM generator and its input streams, the triplet and Destroyer losses, the four-term score, both
training stages in the shared loop, evaluation, resume and the stage-2 start."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from ffpvad.losses import mama
from ffpvad.models import semantic
from ffpvad.cli import parse_args
from ffpvad.config import preset
from ffpvad.training.engine import Trainer, load_resume_state, stage_two_config
from ffpvad.errors import UserError
from ffpvad.methods import method_for
from ffpvad.models import build_generator
from ffpvad.models.f2lm import F2LM, MAMA
from test_training import cli_flags, run


class StubSegmenter(nn.Module):
    """A fixed stand-in for DeepLabv3 (frozen like it, 21 logits per pixel), so the label stream runs in tests."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(123)
        self.conv = nn.Conv2d(3, semantic.N_CLASSES, 3, padding=1)

    def forward(self, frames):
        return self.conv(frames)


@pytest.fixture
def with_stub_segmenter():
    with semantic.SEMANTICS.replaced("deeplabv3", lambda cfg: StubSegmenter()):
        yield


@pytest.fixture
def mama_cfg(small_cfg):
    cfg, _ = parse_args(["--dataset=toy", "--model=f2lm", "--flownet=lucaskanade", "--semantic=none"], "t", "")
    keep = ("data_root", "cache_dir", "weights_dir", "results_dir", "log_dir", "img_size", "base_channels",
            "batch_size", "iters", "val_interval", "save_interval", "log_interval", "tensorboard", "device")
    return cfg.replace(**{k: getattr(small_cfg, k) for k in keep})


# --- network ------------------------------------------------------------------------------------------------------

def test_the_authors_shapes_at_256_five_unit_norm_features():
    generator = F2LM(n_inputs=4, base=64).eval()
    frames, motion, labels = torch.rand(1, 12, 256, 256) * 2 - 1, torch.randn(1, 6, 256, 256), torch.randn(
        1, 84, 256, 256)
    with torch.no_grad():
        frame, features = generator(frames, motion, labels, with_features=True)
    assert frame.shape == (1, 3, 256, 256) and frame.abs().max() <= 1
    assert set(features) == {"x4", "y4", "f2m", "z4", "f2l"}
    for name, feature in features.items():
        assert feature.shape == (1, 512, 32, 32), name
        assert torch.allclose(feature.norm(dim=1), torch.ones(1, 32, 32), atol=1e-4), name
    assert generator.frame_encoder.inc[0].in_channels == 12
    assert generator.motion_encoder.inc[0].in_channels == 6 and generator.label_encoder.inc[0].in_channels == 84
    assert generator.fuse[0].in_channels == 1536 and generator.se.fc[0].out_features == 64  # SE reduction 8
    assert set(generator.last_terms) == {"motion_triplet", "label_triplet"}  # kept for the score in eval mode


def test_streams_come_and_go_with_their_inputs():
    no_labels = F2LM(4, 8, motion=True, semantic=False)
    assert no_labels.label_encoder is None and no_labels.fuse[0].in_channels == 2 * 64
    bare = F2LM(4, 8, motion=False, semantic=False).eval()
    out, features = bare(torch.rand(2, 12, 32, 32), with_features=True)
    assert out.shape == (2, 3, 32, 32) and features["y4"] is None and bare.last_terms == {}


def test_missing_input_networks_say_so(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    cfg = preset("toy").replace(model="f2lm", flownet="lucaskanade", semantic="deeplabv3")
    with pytest.raises(UserError, match=r"DeepLabv3-ResNet101 weights not found .*--semantic=none"):
        build_generator(cfg)
    with pytest.raises(UserError, match=r"FlowNet2-SD weights not found .*--flownet=none"):
        build_generator(cfg.replace(flownet="flownet2sd", semantic="none", weights_dir=str(tmp_path)))
    resolved = method_for(cfg.replace(flownet="auto", semantic="auto", weights_dir=str(tmp_path))).resolve(
        cfg.replace(flownet="auto", semantic="auto", weights_dir=str(tmp_path)))
    assert (resolved.flownet, resolved.semantic) == ("lucaskanade", "none")  # recorded, never random weights


def test_deeplab_loads_from_the_torch_cache_frozen(tmp_path, monkeypatch):
    from torchvision.models.segmentation import deeplabv3_resnet101

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    path = semantic.deeplab_weights_path()
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    reference = deeplabv3_resnet101(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    torch.save(reference.state_dict(), path)  # torchvision's key names and shapes, random values
    network = semantic.build_semantic(preset("toy").replace(semantic="deeplabv3"))
    assert not network.training and not any(p.requires_grad for p in network.parameters())
    logits = network(torch.rand(1, 3, 32, 32) * 2 - 1)
    assert logits.shape == (1, 21, 32, 32)
    path.write_bytes(b"\x00 not a file torch can read")
    with pytest.raises(UserError, match="cannot read DeepLabv3 weights"):
        semantic.build_semantic(preset("toy").replace(semantic="deeplabv3"))


# --- losses -------------------------------------------------------------------------------------------------------

def test_triplet_distance_is_over_the_width_axis_by_hand():
    anchor = torch.zeros(1, 1, 2, 2)
    positive = torch.tensor([[[[3.0, 4.0], [0.0, 0.0]]]])  # row 0 at distance 5 along the width, row 1 at 0
    negative = torch.tensor([[[[0.0, 1.0], [0.0, 2.0]]]])  # distances 1 and 2
    hinge = mama.triplet_hinge(anchor, positive, negative, margin=0.2)
    assert hinge.shape == (1, 1, 2)  # (B, C, H): the width was reduced
    assert torch.allclose(hinge, torch.tensor([[[5 - 1 + 0.2, 0.0]]]), atol=1e-4)  # row 1: 0 - 2 + 0.2 < 0
    assert torch.isclose(mama.triplet_loss(anchor, positive, negative), torch.tensor(4.2 / 2), atol=1e-4)
    # Over the height axis the same tensors would give other distances (3 and 4.47): the axis matters.
    a, p, n = torch.randn(3, 2, 4, 5, 6).unbind(0)
    reference = nn.TripletMarginWithDistanceLoss(distance_function=nn.PairwiseDistance(2), margin=0.2)
    assert torch.isclose(mama.triplet_loss(a, p, n, 0.2), reference(a, p, n), atol=1e-6)


def test_destroyer_target_at_its_two_ends():
    assert torch.allclose(mama.black_weight(torch.tensor([1.0, 0.9, 0.75, 0.2, -0.3])),
                          torch.tensor([0.0, 0.4, 1.0, 1.0, 1.0]))
    torch.manual_seed(0)
    real = torch.rand(1, 3, 32, 32) * 2 - 1
    clean = torch.rand(1, 3, 32, 32) * 2 - 1
    output = torch.rand(1, 3, 32, 32) * 2 - 1
    noisy = real.clone()
    noisy[..., :16, :16] = 0.0  # patch 0 dropped to zero, as the corruption does (SSIM < 0.75); 1-3 perfect (SSIM 1)
    s = mama.patch_ssim(mama.to_patches(noisy, 2)[0], mama.to_patches(real, 2)[0])
    assert s[0] < 0.75 and torch.allclose(s[1:], torch.ones(3))
    loss = mama.destroyer_loss(output, clean, noisy, real, grid=2)
    out_p, clean_p = mama.to_patches(output, 2), mama.to_patches(clean, 2)
    expected = (out_p[:, 0] + 1).pow(2).mean() + sum((out_p[:, k] - clean_p[:, k]).pow(2).mean() for k in (1, 2, 3))
    assert torch.isclose(loss, expected, atol=1e-5)
    assert torch.equal(mama.from_patches(mama.to_patches(real, 8), 8), real)


def test_ssim_range_follows_the_noisy_patch_like_the_authors():
    bright = torch.full((1, 3, 16, 16), 0.5)
    dark = bright.clone()
    dark[..., 0, 0] = -0.9
    assert mama.dynamic_range(torch.cat([bright, dark])).tolist() == [1.0, 2.0]
    # Constant patches a, b: SSIM = (2ab + c1) / (a^2 + b^2 + c1) (the structure term is c2 / c2), c1 = (0.01 L)^2.
    for a, b, L in ((0.05, 0.02, 1.0), (-0.6, -0.02, 2.0)):  # where c1 matters: L = 1 vs 2 differ by > 5e-4
        c1 = (0.01 * L) ** 2
        value = mama.patch_ssim(torch.full((1, 3, 11, 11), a), torch.full((1, 3, 11, 11), b))[0]
        assert torch.isclose(value, torch.tensor((2 * a * b + c1) / (a * a + b * b + c1)), atol=2e-5)


def test_patch_dropout_zeroes_whole_channels_of_picked_patches_only():
    torch.manual_seed(3)
    image = torch.rand(2, 3, 64, 64) + 0.5  # no zeros of its own
    noisy = mama.corrupt_patches(image)
    before, after = mama.to_patches(image), mama.to_patches(noisy)
    changed = (before != after).flatten(2).any(-1).any(0)  # per patch, over batch and pixels
    for k in range(64):
        if not changed[k]:
            continue
        channel_max = after[:, k].flatten(2).abs().amax(-1)  # (B, C): a zeroed channel is all zero
        scaled = after[:, k].flatten(2) / before[:, k].flatten(2)
        for b in range(2):
            for c in range(3):
                assert channel_max[b, c] == 0 or torch.allclose(scaled[b, c], scaled[b, c, :1].expand_as(scaled[b, c]))
    assert changed.any()


def test_four_term_score_by_hand():
    terms = {"generator_mse": np.array([1.0, 2.0, 3.0]), "motion_triplet": np.array([3.0, 3.0, 3.0]),
             "destroyer_mse": np.array([2.0, 0.0, 1.0]), "label_triplet": np.array([0.0, 0.0, 3.0])}
    z = np.sqrt(1.5)  # z-scores of [1, 2, 3]: -1.2247, 0, 1.2247
    expected = (2 * 0 + 1 * np.array([-1, -1, 2]) / np.sqrt(2) + 0.5 * np.array([-z, 0, z])
                + 4 * np.array([z, -z, 0]))
    assert np.allclose(mama.combined_score(terms, (2, 1, 0.5, 4)), expected)
    cfg = preset("toy").replace(model="f2lm", score_weights="2,1,0.5,4")
    per_video = method_for(cfg).anomaly_values([np.zeros(3)], {k: [v] for k, v in terms.items()}, cfg)
    assert np.allclose(per_video[0], expected)
    with pytest.raises(UserError, match="--score_weights=1,1 is not valid"):
        parse_args(["--score_weights=1,1"], "t", "")


# --- training -----------------------------------------------------------------------------------------------------

def test_stage_one_trains_every_parameter_and_no_frozen_one(mama_cfg, with_stub_segmenter):
    trainer = Trainer(mama_cfg.replace(semantic="deeplabv3"), progress=False)
    generator = trainer.generator
    assert generator.label_encoder is not None and generator.motion_encoder is not None
    trainer.train_step(*trainer.next_clips())
    for name, network in (("G", generator), ("D", trainer.discriminator)):
        starved = [n for n, p in network.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
        assert not starved, f"{name} parameters without gradient: {starved}"
    assert all(p.grad is None and not p.requires_grad for p in generator.aux.semantic.parameters())
    cache = trainer.context.cache["f2lm"]  # inputs computed once per frame pair / frame, then reused
    assert len(cache["flow"]) == 3 * 4 and len(cache["labels"]) <= 4 * 4
    ids, clips = trainer.next_clips()
    before = len(cache["flow"])
    trainer.train_step(ids, clips)
    trainer.train_step(ids, clips)
    assert len(cache["flow"]) <= before + 3 * 4


def test_stage_two_trains_the_destroyer_only_and_resumes_exactly(mama_cfg):
    Trainer(mama_cfg.replace(iters=2), progress=False).fit()  # stage 1 -> latest_toy
    given = mama_cfg.replace(stage="destroyer", pretrained="latest_toy", iters=4, img_size=64, base_channels=4)
    cfg = stage_two_config(given, explicit={"stage", "pretrained", "iters"})
    assert (cfg.img_size, cfg.base_channels) == (32, 8)  # the generator's settings come from stage 1
    trainer = Trainer(cfg, progress=False)
    assert isinstance(trainer.generator, MAMA) and not trainer.generator.generator.training
    stage_one = torch.load(trainer.cfg.weights_dir + "/latest_toy.pth", weights_only=False)["generator"]
    frozen = {k: v.clone() for k, v in trainer.generator.generator.state_dict().items()}
    assert all(torch.equal(frozen[k], stage_one[k]) for k in stage_one)
    trainer.train_step(*trainer.next_clips())
    assert all(p.grad is None for p in trainer.generator.generator.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.generator.destroyer.parameters())
    assert all(torch.equal(v, frozen[k]) for k, v in trainer.generator.generator.state_dict().items())

    straight = Trainer(cfg, progress=False).fit()
    assert (trainer.checkpoint_path("latest").name, trainer.checkpoint_path("g_best_auc").name) == (
        "a_latest_toy.pth", "a_best_auc_toy.pth")
    Trainer(cfg.replace(iters=2), progress=False).fit()
    resumed_cfg, state = load_resume_state(cfg.replace(resume="a_latest_toy", pretrained=""), explicit={"iters"})
    tail = Trainer(resumed_cfg, resume_from=state, progress=False).fit().history
    assert [s.as_dict() for s in tail] == [s.as_dict() for s in straight.history[2:]]


def test_stage_two_refuses_what_it_cannot_start_from(mama_cfg, small_cfg):
    Trainer(small_cfg.replace(iters=1), progress=False).fit()  # an FFP checkpoint
    with pytest.raises(UserError, match="holds a 'ffp' generator: MAMA's Destroyer stage starts from an F2LM"):
        stage_two_config(mama_cfg.replace(stage="destroyer", pretrained="latest_toy"), {"stage"})
    with pytest.raises(UserError, match="add --pretrained=g_best_auc_toy"):
        stage_two_config(mama_cfg.replace(stage="destroyer"), {"stage"})
    with pytest.raises(UserError, match=r"--stage=destroyer is not a stage of --model=ffp \(it has generator\)"):
        parse_args(["--stage=destroyer"], "t", "")
    Trainer(mama_cfg.replace(iters=1), progress=False).fit()  # an F2LM checkpoint, motion from Lucas-Kanade
    given = mama_cfg.replace(stage="destroyer", pretrained="latest_toy", flownet="spynet")
    with pytest.raises(UserError, match=r"as it was trained: drop --flownet=spynet \(stage 1: lucaskanade\)"):
        stage_two_config(given, {"stage", "pretrained", "flownet"})
    cfg = stage_two_config(mama_cfg.replace(stage="destroyer", pretrained="latest_toy", val_holdout=2), {"stage"})
    with pytest.raises(UserError, match="--val_holdout selects by the generator's PSNR"):
        Trainer(cfg, progress=False)


def test_model_preset_follows_the_authors_per_dataset():
    from ffpvad.cli import resolve
    for dataset, lr in (("ped2", 1e-4), ("avenue", 2e-4)):
        cfg = resolve({"dataset": dataset, "model": "f2lm"})
        assert (cfg.lam_int, cfg.lam_grad, cfg.lam_adv, cfg.lr_g, cfg.weight_decay) == (1.0, 1.0, 0.05, lr, lr)
        assert cfg.lr_decay_gamma == 1.0 and cfg.flownet == "auto"  # no schedule; flows feed an encoder


def test_both_stages_and_the_tuning_tool_from_the_command_line(mama_cfg, tmp_path):
    flags = cli_flags(mama_cfg) + ["--dataset=toy", "--model=f2lm", "--img_size=32", "--base_channels=8",
                                   "--batch_size=4", "--semantic=none"]
    stage1 = run("train.py", *flags, "--iters=3", "--val_interval=3")
    assert stage1.returncode == 0, stage1.stderr
    assert "motion input uses the weight-free --flownet=lucaskanade" in stage1.stdout  # said, and recorded
    assert "WITHOUT the flow loss" not in stage1.stdout  # F2LM has none to miss
    # MAMA's README command resumes stage 1; ours says how to start stage 2.
    mamas_way = run("train.py", *cli_flags(mama_cfg), "--dataset=toy", "--resume=latest_toy", "--iters=4",
                    "--val_interval=0")
    assert mamas_way.returncode == 0, mamas_way.stderr
    assert "--stage=destroyer --pretrained=latest_toy" in mamas_way.stdout
    stage2 = run("train.py", *cli_flags(mama_cfg), "--dataset=toy", "--model=f2lm", "--stage=destroyer",
                 "--pretrained=g_best_auc_toy", "--iters=2", "--val_interval=2")
    assert stage2.returncode == 0, stage2.stderr
    evaluated = run("eval.py", *cli_flags(mama_cfg), "--dataset=toy", "--trained_model=a_best_auc_toy")
    assert evaluated.returncode == 0, evaluated.stderr
    folder = tmp_path / "results" / "a_best_auc_toy"
    config = json.loads((folder / "config.json").read_text())
    assert (config["stage"], config["flownet"], config["semantic"]) == ("destroyer", "lucaskanade", "none")
    header = (folder / "scores.csv").read_text().splitlines()[0]
    assert header == "video,frame,psnr,destroyer_mse,generator_mse,motion_triplet,anomaly_score,label"
    scores = np.load(folder / "scores.npz")
    lengths = np.cumsum(scores["video_lengths"])[:-1]
    terms = {k: np.split(scores[k], lengths) for k in ("generator_mse", "motion_triplet", "destroyer_mse")}
    expected = [mama.combined_score({k: t[v] for k, t in terms.items()}, (1, 1, 1, 1)) for v in range(10)]
    expected = np.concatenate([(e - e.min()) / (e.max() - e.min()) for e in expected])
    assert np.allclose(scores["score"], expected)
    # generator error = MSE on [0, 1], PSNR's own quantity: PSNR = 10 log10(1 / MSE)
    assert np.allclose(scores["psnr"], 10 * np.log10(1 / scores["generator_mse"]), atol=2e-3)
    only_g = run("eval.py", *cli_flags(mama_cfg), "--dataset=toy", "--trained_model=a_best_auc_toy",
                 "--score_weights=0,0,1,0", f"--results_dir={tmp_path / 'only_g'}")
    assert only_g.returncode == 0, only_g.stderr
    alone = np.load(tmp_path / "only_g" / "a_best_auc_toy" / "scores.npz")["score"]
    per_video = np.split(scores["generator_mse"], lengths)
    assert np.allclose(alone, np.concatenate([(e - e.min()) / (e.max() - e.min()) for e in per_video]))
    tuned = run("tools/mama_weights.py", str(folder))
    assert tuned.returncode == 0, tuned.stderr
    assert "fixed weights" in tuned.stdout and "TUNED ON THE TEST LABELS" in tuned.stdout
