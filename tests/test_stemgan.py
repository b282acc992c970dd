"""STem-GAN: the temporal shift, the generator, and transfer learning with --pretrained."""
import shutil

import pytest
import torch

from ffpvad.config import preset
from ffpvad.training.engine import Trainer
from ffpvad.errors import UserError
from ffpvad.models import build_generator
from ffpvad.models.stemgan import temporal_shift


def test_temporal_shift_moves_exactly_one_eighth_each_way_and_zero_fills():
    b, t, c = 2, 4, 16
    x = torch.arange(b * t * c, dtype=torch.float32).view(b * t, c, 1, 1) + 1  # every value distinct, non-zero
    out = temporal_shift(x, t).view(b, t, c)
    x = x.view(b, t, c)
    assert torch.equal(out[:, 1:, 0:2], x[:, :-1, 0:2])  # channels 0-1: from the previous frame
    assert torch.equal(out[:, :-1, 2:4], x[:, 1:, 2:4])  # channels 2-3: from the next frame
    assert torch.equal(out[:, :, 4:], x[:, :, 4:])  # the other 3/4 untouched
    assert (out[:, 0, 0:2] == 0).all() and (out[:, -1, 2:4] == 0).all()  # zero at the ends
    assert not torch.equal(out[0].flatten(), out[1].flatten())  # samples of the batch never mix


def test_stemgan_output_shape_and_time_matters():
    torch.manual_seed(0)
    cfg = preset("toy").replace(model="stemgan", img_size=32, base_channels=16)
    generator = build_generator(cfg).eval()
    frames = torch.rand(2, 12, 32, 32) * 2 - 1
    out = generator(frames)
    assert out.shape == (2, 3, 32, 32)
    earlier = frames.clone()
    earlier[:, :3] = 0  # change only the oldest frame: the motion stream must see it
    assert not torch.allclose(generator(earlier), out)


@pytest.fixture
def second_dataset(toy_root, tmp_path):
    """The toy frames again under the name ped2, so a run can transfer between two datasets."""
    root = tmp_path / "data2"
    shutil.copytree(toy_root / "toy", root / "ped2")
    shutil.copy(toy_root / "toy" / "toy.mat", root / "ped2" / "ped2.mat")
    return root


def test_pretrained_initialises_across_datasets_with_fresh_optimizers(small_cfg, second_dataset):
    source = Trainer(small_cfg.replace(model="stemgan", iters=2), progress=False)
    source.fit()
    target_cfg = preset("ped2").replace(
        data_root=str(second_dataset), cache_dir=small_cfg.cache_dir, weights_dir=small_cfg.weights_dir,
        log_dir=small_cfg.log_dir, img_size=32, base_channels=8, model="stemgan", flownet="none", iters=1,
        batch_size=4, val_interval=0, save_interval=0, tensorboard=False, device="cpu", pretrained="latest_toy")
    target = Trainer(target_cfg, progress=False)
    for a, b in zip(target.generator.state_dict().values(), source.generator.state_dict().values()):
        assert torch.equal(a, b)
    assert target.step == 0 and not target.opt_g.state  # fresh optimizer, fresh count
    target.fit()
    assert torch.load(target.checkpoint_path("latest"), weights_only=True)["config"]["pretrained"] == "latest_toy"


def test_pretrained_refuses_another_architecture_clearly(small_cfg):
    Trainer(small_cfg.replace(model="stemgan", iters=1), progress=False).fit()
    with pytest.raises(UserError, match="holds a 'stemgan' generator but --model=ffp"):
        Trainer(small_cfg.replace(pretrained="latest_toy"), progress=False)
    with pytest.raises(UserError, match=r"generator layers do not match .*appearance.stages.0.0.0.weight"):
        Trainer(small_cfg.replace(model="stemgan", base_channels=16, pretrained="latest_toy"), progress=False)
