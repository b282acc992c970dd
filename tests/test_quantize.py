"""eval.py --quantize=int8: the int8 generator predicts what the float one does, and bad uses are one clear line."""
import pytest
import torch
from torch import nn

from ffpvad.errors import UserError
from ffpvad.models.ffp import UNetGenerator
from ffpvad.models.quantize import quantize_int8


def smooth_clips(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """(n, 12, size, size) in [-1, 1]: four slowly varying frames, like video rather than white noise."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 12, size // 8, size // 8, generator=g) * 2 - 1
    return nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


def test_int8_generator_predicts_like_the_float_one_and_leaves_it_untouched():
    torch.manual_seed(0)
    generator = UNetGenerator(base=8).eval()
    with torch.no_grad():
        generator.out.weight.mul_(20)  # an output that varies, as a trained one does (random init is near constant)
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    quantized = quantize_int8(generator, [smooth_clips(4, seed=s) for s in range(4)], "ffp")
    kinds = {type(m).__module__ for m in quantized.modules()}
    assert any(k.startswith("torch.ao.nn.intrinsic.quantized") or k.startswith("torch.ao.nn.quantized")
               for k in kinds), kinds
    held_out = smooth_clips(4, seed=99)
    with torch.no_grad():
        reference, prediction = generator(held_out), quantized(held_out)
    assert prediction.shape == reference.shape and prediction.dtype == torch.float32
    # Relative error 0.11 measured; calibrating on inputs 20x too small (every activation clipped) gives 1.05.
    assert (prediction - reference).std() < 0.3 * reference.std()
    assert all(torch.equal(before[k], v) for k, v in generator.state_dict().items())
    assert all(p.dtype == torch.float32 for p in generator.parameters())


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(12, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(x) if x.sum() > 0 else -self.conv(x)


def test_a_generator_that_does_not_trace_is_one_clear_line():
    with pytest.raises(UserError, match=r"--quantize=int8 cannot trace or prepare --model=odd .*use --quantize=off"):
        quantize_int8(DataDependent(), [smooth_clips(2)], "odd")


def test_no_calibration_clips_is_one_clear_line():
    with pytest.raises(UserError, match="needs calibration clips"):
        quantize_int8(UNetGenerator(base=8), [], "ffp")


def test_calibration_clips_come_from_a_few_training_videos_only(small_cfg):
    """Spread over 3 of the toy's training videos, and only those are decoded: no test frame is read."""
    from pathlib import Path
    from ffpvad.commands.eval import calibration_clips
    clips = calibration_clips(small_cfg, n_clips=6, n_videos=3)
    assert clips.dtype == torch.uint8 and clips.shape == (6, small_cfg.clip_len, 32, 32, 3)
    cache = Path(small_cfg.cache_dir) / "toy"
    assert len(list((cache / "training").glob("*.npy"))) == 3 and not (cache / "testing").exists()
    assert len({c[0].float().mean().item() for c in clips}) == 6  # six different clips


def test_calibration_without_a_training_split_is_one_clear_line(small_cfg, tmp_path):
    from ffpvad.commands.eval import calibration_clips
    cfg = small_cfg.replace(dataset="ped2", data_root=str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match=r"--quantize=int8 calibrates on training clips, and they cannot be read: "
                                        r"no frames folder at .*\(or use --quantize=off\)"):
        calibration_clips(cfg)
