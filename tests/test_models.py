"""Every registered network: shapes, gradients; FlowNet2-SD loading from a file in the official format."""
import pytest
import torch

from ffpvad.cli import resolve
from ffpvad.config import preset
from ffpvad.errors import UserError
from ffpvad.flow import FLOWNETS, build_flownet
from ffpvad.flow.flownet2sd import FlowNet2SD
from ffpvad.methods import method_for
from ffpvad.models import DISCRIMINATORS, GENERATORS, build_discriminator, build_generator, is_trainable

CFG = preset("toy").replace(img_size=32, base_channels=8)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generator_shapes_range_and_gradients(name):
    torch.manual_seed(0)
    cfg = resolve({"dataset": "toy", "model": name, "semantic": "none"}).replace(img_size=32, base_channels=8)
    generator = build_generator(cfg)
    clip = torch.rand(2, cfg.clip_len, 3, 32, 32) * 2 - 1
    inputs, target = method_for(cfg).split(clip)  # the method says what the generator reads
    output = generator(inputs.requires_grad_())
    assert output.shape == target.shape == (2, 3, 32, 32)
    assert output.min() >= -1 and output.max() <= 1
    if is_trainable(generator):
        output.square().mean().backward()
        # Parts that only a feature loss trains (F2LM's motion/label encoders: the triplets) are checked through
        # the method's own step in their tests (test_mama.py); every other parameter shapes the output.
        feature_only = getattr(generator, "feature_only_prefixes", ())
        starved = [n for n, p in generator.named_parameters()
                   if (p.grad is None or p.grad.abs().sum() == 0) and not n.startswith(feature_only)]
        assert not starved, f"parameters without gradient: {starved}"


@pytest.mark.parametrize("name", sorted(DISCRIMINATORS))
def test_discriminator_outputs_and_gradients(name):
    discriminator = build_discriminator(CFG.replace(discriminator=name))
    out = discriminator(torch.rand(2, 3, 32, 32) * 2 - 1)
    if name == "dcgan":  # Skip-GANomaly's: a real/fake logit per frame and the 100-d latent features
        logit, features = out
        assert logit.shape == (2,) and features.shape == (2, 100, 1, 1)
        score = logit + features.mean()
    else:
        score = out
        assert score.dim() == 4 and score.shape[:2] == (2, 1) and score.shape[2] > 1  # a map of patches
        assert score.min() >= 0 and score.max() <= 1
    score.mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in discriminator.parameters())


def test_ffp_unet_at_the_papers_width_has_the_expected_size():
    generator = build_generator(preset("ped2"))
    n = sum(p.numel() for p in generator.parameters())
    assert 7.5e6 < n < 8.0e6  # 64-128-256-512 U-Net on 12 input channels
    discriminator = build_discriminator(preset("ped2"))
    assert [m.out_channels for m in discriminator.modules() if isinstance(m, torch.nn.Conv2d)] == [128, 256, 512,
                                                                                                   512, 1]


# --- FlowNet2-SD ----------------------------------------------------------------------------------------------

def write_official_flownet2sd(path, seed=0):
    """A checkpoint with the official layout: {'epoch', 'state_dict', 'best_EPE'}, 60 tensors, random values."""
    torch.manual_seed(seed)
    network = FlowNet2SD()
    for p in network.parameters():
        torch.nn.init.normal_(p, std=0.01)
    torch.save({"epoch": 0, "state_dict": network.state_dict(), "best_EPE": 1e10}, path)
    return network


def test_flownet2sd_key_table_matches_the_official_checkpoint():
    state = FlowNet2SD().state_dict()
    assert len(state) == 60
    assert sum(t.numel() for t in state.values()) == 45_371_666
    assert state["conv0.0.weight"].shape == (64, 6, 3, 3)
    assert state["deconv4.0.weight"].shape == (1026, 256, 4, 4)
    assert state["inter_conv2.0.weight"].shape == (64, 194, 3, 3)
    assert state["upsampled_flow3_to_2.weight"].shape == (2, 2, 4, 4)


def test_flownet2sd_loads_frozen_and_is_differentiable_in_its_input(tmp_path):
    reference = write_official_flownet2sd(tmp_path / "FlowNet2-SD_checkpoint.pth.tar")
    cfg = CFG.replace(flownet="flownet2sd", weights_dir=str(tmp_path))
    network = build_flownet(cfg)
    assert all(torch.equal(a, b) for a, b in zip(network.state_dict().values(), reference.state_dict().values()))
    assert not network.training and not any(p.requires_grad for p in network.parameters())
    network.train()  # a parent calling train() must not wake it up
    assert not network.training
    frames = (torch.rand(2, 3, 2, 64, 64) * 2 - 1).requires_grad_(True)
    flow = network(frames)
    assert flow.shape == (2, 2, 64, 64)
    flow.abs().mean().backward()
    assert frames.grad is not None and frames.grad.abs().sum() > 0
    assert all(p.grad is None for p in network.parameters())
    odd = network(torch.rand(1, 3, 2, 40, 48) * 2 - 1)  # not multiples of 64: resized inside, flow rescaled
    assert odd.shape == (1, 2, 40, 48)


def test_flownet2sd_input_convention_is_per_sample_mean_removed_0_255():
    network = FlowNet2SD().eval()
    frames = torch.rand(1, 3, 2, 64, 64) * 2 - 1
    shifted = (frames + 0.2).clamp(-1, 1)  # a brightness change only moves the mean, which is subtracted
    pair = (frames + 1) * 127.5
    assert torch.allclose(network(frames), network.forward_raw(pair), atol=1e-5)
    constant = torch.full_like(frames, 0.3)
    assert torch.allclose(network(constant), network(torch.full_like(frames, -0.5)), atol=1e-5)
    assert shifted.shape == frames.shape


def test_missing_flownet_weights_say_where_to_get_them(tmp_path):
    with pytest.raises(UserError, match=r"FlowNet2-SD weights not found .*flownet2-pytorch.*--flownet=none"):
        build_flownet(CFG.replace(flownet="flownet2sd", weights_dir=str(tmp_path)))


def test_corrupt_or_foreign_flownet_weights(tmp_path):
    (tmp_path / "FlowNet2-SD.pth").write_bytes(b"\x00garbage")
    with pytest.raises(UserError, match="cannot read FlowNet2-SD weights"):
        build_flownet(CFG.replace(flownet="flownet2sd", weights_dir=str(tmp_path)))
    torch.save({"state_dict": {"conv0.0.weight": torch.zeros(1)}}, tmp_path / "FlowNet2-SD.pth")
    with pytest.raises(UserError, match="does not match FlowNet2-SD"):
        build_flownet(CFG.replace(flownet="flownet2sd", weights_dir=str(tmp_path)))


def test_unknown_names_list_the_registry():
    with pytest.raises(UserError, match="unknown --model 'vit': valid names are copylast, f2lm, ffp"):
        build_generator(CFG.replace(model="vit"))
    with pytest.raises(UserError, match="unknown --flownet 'pwc'"):
        build_flownet(CFG.replace(flownet="pwc"))
    assert "none" in FLOWNETS and build_flownet(CFG.replace(flownet="none")) is None
