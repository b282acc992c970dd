"""Flow estimators: shapes, units, gradients, known shifts; the SPyNet converter; the `auto` choice."""
import cv2
import numpy as np
import pytest
import torch

from ffpvad.config import preset
from conftest import load_tool, shared_path
from ffpvad.errors import UserError
from ffpvad.flow import build_flownet, resolve_flownet_name
from ffpvad.flow.spynet import SpyNet
from t7 import spynet_level_file
from test_models import write_official_flownet2sd

CFG = preset("toy")


def shifted_pair(shift_x: float, shift_y: float = 0.0, size: int = 128, seed: int = 0) -> torch.Tensor:
    """(1, 3, 2, size, size) in [-1, 1]: a smooth random texture, and the same texture moved by (shift_x, shift_y).

    The true flow from frame 0 to frame 1 is then (shift_x, shift_y) everywhere away from the borders.
    """
    rng = np.random.default_rng(seed)
    big = cv2.resize(rng.random((size // 4 + 8, size // 4 + 8)).astype(np.float32), (size + 32, size + 32),
                     interpolation=cv2.INTER_CUBIC)
    moved = cv2.warpAffine(big, np.float32([[1, 0, shift_x], [0, 1, shift_y]]), big.shape[::-1],
                           flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    crop = lambda im: torch.from_numpy(im[16:16 + size, 16:16 + size]).clamp(0, 1) * 2 - 1
    frames = torch.stack([crop(big), crop(moved)])  # (2, H, W)
    return frames[None, None].expand(1, 3, 2, size, size).contiguous()


def interior_mean(flow: torch.Tensor, margin: int = 16) -> torch.Tensor:
    return flow[0, :, margin:-margin, margin:-margin].mean(dim=(1, 2))


def spynet_file(tmp_path, seed=0):
    torch.manual_seed(seed)
    network = SpyNet()
    for p in network.parameters():
        torch.nn.init.normal_(p, std=0.01)
    torch.save({"state_dict": network.state_dict()}, tmp_path / "spynet_sintel-final.pth")
    return network


def estimator(name, tmp_path):
    if name == "flownet2sd":
        write_official_flownet2sd(tmp_path / "FlowNet2-SD.pth")
    if name == "spynet":
        spynet_file(tmp_path)
    return build_flownet(CFG.replace(flownet=name, weights_dir=str(tmp_path)))


@pytest.mark.parametrize("name", ["flownet2sd", "spynet", "lucaskanade"])
def test_every_estimator_shape_frozen_and_differentiable_in_its_input(name, tmp_path):
    network = estimator(name, tmp_path)
    frames = (torch.rand(2, 3, 2, 48, 80) * 2 - 1).requires_grad_(True)
    flow = network(frames)
    assert flow.shape == (2, 2, 48, 80) and torch.isfinite(flow).all()
    flow.square().mean().backward()
    assert frames.grad is not None and frames.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in network.parameters())


@pytest.mark.parametrize("name", ["flownet2sd", "spynet"])  # (Lucas-Kanade has no weights to convert)
def test_every_estimator_gives_the_same_flow_and_gradient_in_channels_last(name, tmp_path):
    """The training engine converts the flow network to NHWC with G and D (for speed): same numbers, same gradient."""
    network = estimator(name, tmp_path)
    frames = torch.rand(2, 3, 2, 64, 64) * 2 - 1
    results = []
    for memory_format in (torch.contiguous_format, torch.channels_last):
        network = network.to(memory_format=memory_format)
        assert all(p.is_contiguous(memory_format=memory_format) for p in network.parameters() if p.dim() == 4)
        x = frames.clone().requires_grad_(True)
        flow = network(x)
        flow.square().mean().backward()
        results.append((flow.detach(), x.grad))
    (flow_a, grad_a), (flow_b, grad_b) = results
    assert flow_a.abs().max() > 0 and grad_a.abs().max() > 0
    torch.testing.assert_close(flow_b, flow_a, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad_b, grad_a, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shift", [(3.0, 0.0), (0.0, -2.0), (1.5, 2.5)])
def test_weight_free_estimator_recovers_a_known_shift(shift):
    network = build_flownet(CFG.replace(flownet="lucaskanade"))
    flow = interior_mean(network(shifted_pair(*shift)))
    assert torch.allclose(flow, torch.tensor(shift), atol=0.5), flow  # x first, then y, in pixels


def test_weight_free_estimator_sees_no_motion_between_equal_frames():
    frames = shifted_pair(0.0)
    flow = build_flownet(CFG.replace(flownet="lucaskanade"))(frames)
    assert flow.abs().max() < 1e-3


def test_spynet_converter_round_trips_a_torch7_file_with_the_real_layout(tmp_path):
    convert, main = load_tool("convert_spynet").convert, load_tool("convert_spynet").main

    rng = np.random.default_rng(0)
    written = {}
    for level in range(1, 7):
        widths = (8, 32, 64, 32, 16, 2)
        weights = [(rng.normal(size=(widths[i + 1], widths[i], 7, 7)).astype(np.float32),
                    rng.normal(size=widths[i + 1]).astype(np.float32)) for i in range(5)]
        spynet_level_file(tmp_path / f"modelL{level}_F.t7", weights, rng)
        written[level] = weights
    state = convert(tmp_path, "sintel-final")
    for level, weights in written.items():
        for index, (weight, bias) in zip((0, 2, 4, 6, 8), weights):
            assert np.array_equal(state[f"basic.{level - 1}.{index}.weight"].numpy(), weight)
            assert np.array_equal(state[f"basic.{level - 1}.{index}.bias"].numpy(), bias)
    assert main([str(tmp_path), "--out", str(tmp_path / "w" / "spynet_sintel-final.pth")]) == 0
    network = build_flownet(CFG.replace(flownet="spynet", weights_dir=str(tmp_path / "w")))
    assert torch.equal(network.basic[5][8].weight, torch.from_numpy(written[6][4][0]))


def test_spynet_converter_bad_inputs(tmp_path):
    convert = load_tool("convert_spynet").convert
    with pytest.raises(UserError, match="missing .*modelL1_F.t7"):
        convert(tmp_path, "sintel-final")
    (tmp_path / "modelL1_F.t7").write_bytes(b"not torch7")
    with pytest.raises(UserError, match="cannot read .*modelL1_F.t7 as a SPyNet Torch7 level file"):
        convert(tmp_path, "sintel-final")


def test_pretrained_spynet_recovers_a_3_pixel_shift(tmp_path):
    convert = load_tool("convert_spynet").convert
    folder = shared_path("weights", "spynet_t7")
    torch.save({"state_dict": convert(folder, "sintel-final")}, tmp_path / "spynet_sintel-final.pth")
    network = build_flownet(CFG.replace(flownet="spynet", weights_dir=str(tmp_path)))
    with torch.no_grad():
        flow = interior_mean(network(shifted_pair(3.0)))
    print(f"pretrained SPyNet (sintel-final) on a 3 px shift: {flow.tolist()}")
    assert torch.allclose(flow, torch.tensor([3.0, 0.0]), atol=0.5), flow


def test_auto_prefers_weights_that_exist_and_says_so_loudly(tmp_path, capsys):
    cfg = CFG.replace(flownet="auto", weights_dir=str(tmp_path))
    assert resolve_flownet_name(cfg) == "none"
    assert "NOTE: --flownet=auto found no FlowNet2-SD or SPyNet weights" in capsys.readouterr().out
    spynet_file(tmp_path)
    assert resolve_flownet_name(cfg) == "spynet"
    write_official_flownet2sd(tmp_path / "FlowNet2-SD.pth")
    assert resolve_flownet_name(cfg) == "flownet2sd"
    assert resolve_flownet_name(cfg.replace(flownet="none")) == "none"


def test_auto_is_recorded_as_what_it_resolved_to(small_cfg, tmp_path):
    from ffpvad.training.engine import Trainer
    trainer = Trainer(small_cfg.replace(flownet="auto"), progress=False)
    assert trainer.cfg.flownet == "none" and trainer.state()["config"]["flownet"] == "none"
    spynet_file(tmp_path)
    trainer = Trainer(small_cfg.replace(flownet="auto", weights_dir=str(tmp_path)), progress=False)
    assert trainer.cfg.flownet == "spynet" and trainer.flownet is not None
