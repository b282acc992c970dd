"""The UCSD pixel-level criterion by hand and against a brute-force threshold sweep; anomaly maps; mask sources."""
import numpy as np
import pytest
import torch

from ffpvad.errors import UserError
from ffpvad.evaluation.localization import (PixelAccumulator, _k_of, anomaly_maps, frame_value, pixel_curve,
                          pixel_metrics, pixel_mask_source, smooth_maps)
from ffpvad.evaluation.metrics import error_map, psnr


def test_anomalous_frame_value_is_the_threshold_up_to_which_40_percent_are_covered():
    mask = np.zeros((2, 5), bool)
    mask[0] = True  # five truly anomalous pixels
    amap = np.array([[0.9, 0.1, 0.8, 0.2, 0.7],
                     [5.0, 5.0, 5.0, 5.0, 5.0]], np.float32)  # large values outside the mask do not count
    label, value = frame_value(amap, mask)
    assert label == 1 and value == pytest.approx(0.8)  # k = ceil(0.4 * 5) = 2: the 2nd largest of .9 .8 .7 .2 .1
    # by the definition: at t = 0.8, 2 of 5 (40%) are flagged -> detected; just above, 1 of 5 -> not
    assert (amap[mask] >= 0.8).mean() >= 0.4 and (amap[mask] >= 0.8001).mean() < 0.4


def test_normal_frame_value_is_its_maximum():
    amap = np.array([[0.1, 0.3], [0.25, 0.0]], np.float32)
    assert frame_value(amap, np.zeros((2, 2), bool)) == (0, pytest.approx(0.3))


def test_k_has_no_floating_point_surprise():
    assert 0.14 * 100 > 14  # the trap: math.ceil(0.14 * 100) is 15
    assert _k_of(100, 0.14) == 14 and _k_of(15, 0.4) == 6 and _k_of(5, 0.4) == 2
    assert _k_of(1, 0.4) == 1 and _k_of(3, 0.4) == 2


def test_map_is_resized_to_the_mask_not_the_mask_to_the_map():
    mask = np.zeros((8, 8), bool)
    mask[0, 0] = True  # one pixel: nearest-neighbour downsampling to 4x4 could lose or keep it by luck
    amap = np.zeros((4, 4), np.float32)
    amap[0, 0] = 1.0
    label, value = frame_value(amap, mask)
    assert label == 1 and value == pytest.approx(1.0)  # bilinear at the corner keeps the value
    assert frame_value(amap, np.zeros((8, 8), bool))[1] == pytest.approx(1.0)  # max unchanged by upsampling


def test_pixel_auc_and_eer_by_hand():
    # two anomalous frames (values 0.8, 0.3) and two normal frames (maxima 0.5, 0.1):
    # t=0.8: TPR 1/2 FPR 0;  t=0.5: TPR 1/2 FPR 1/2;  t=0.3: TPR 1 FPR 1/2;  t=0.1: TPR 1 FPR 1.
    # area = 0.5 * 0.5 (from FPR 0 to 1/2) + 1 * 0.5 = 0.75; FNR = FPR at (1/2, 1/2) -> EER 0.5.
    result = pixel_metrics([0.8, 0.3, 0.5, 0.1], [1, 1, 0, 0])
    assert result.auc == pytest.approx(0.75) and result.eer == pytest.approx(0.5)
    assert (result.n_frames, result.n_anomalous) == (4, 2)


def _sweep(maps, masks, coverage=0.4):
    """The criterion as written: for every threshold, count detected anomalous and false-positive normal frames."""
    thresholds = np.unique(np.concatenate([m.ravel() for m in maps]))
    points = [(0.0, 0.0)]
    anomalous = [mk.any() for mk in masks]
    for t in thresholds[::-1]:
        tp = sum((m[mk] >= t).mean() >= coverage for m, mk, a in zip(maps, masks, anomalous) if a)
        fp = sum((m >= t).any() for m, a in zip(maps, anomalous) if not a)
        points.append((fp / (len(maps) - sum(anomalous)), tp / sum(anomalous)))
    points.append((1.0, 1.0))
    fpr, tpr = np.array(points).T
    return float(np.trapezoid(tpr, fpr))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_frame_reduction_equals_the_brute_force_threshold_sweep(seed):
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for k in range(30):
        amap = rng.random((6, 7)).round(2).astype(np.float32)  # rounding creates ties
        mask = np.zeros((6, 7), bool)
        if k % 3:
            y, x = rng.integers(0, 4, 2)
            mask[y:y + rng.integers(1, 4), x:x + rng.integers(1, 5)] = True
            amap[mask] += rng.random() * 0.5  # anomalies somewhat brighter
        maps.append(amap)
        masks.append(mask)
    labels, values = zip(*(frame_value(m, mk) for m, mk in zip(maps, masks)))
    assert pixel_metrics(values, labels).auc == pytest.approx(_sweep(maps, masks), abs=1e-9)
    fpr, tpr, _ = pixel_curve(values, labels)
    assert fpr[0] == 0 and tpr[-1] == 1


def test_error_map_mean_is_the_mse_of_psnr():
    torch.manual_seed(0)
    prediction, target = torch.rand(3, 3, 8, 8) * 2 - 1, torch.rand(3, 3, 8, 8) * 2 - 1
    mse = error_map(prediction, target).flatten(1).mean(1)
    assert torch.allclose(10 * torch.log10(1 / mse), psnr(prediction, target), atol=1e-4)


def test_smoothing_keeps_constants_and_mass_and_sigma_zero_is_identity():
    constant = torch.full((1, 16, 16), 0.25)
    assert torch.allclose(smooth_maps(constant, 2.0), constant, atol=1e-6)
    impulse = torch.zeros(1, 32, 32)
    impulse[0, 16, 16] = 1.0
    smoothed = smooth_maps(impulse, 1.5)
    assert smoothed.sum().item() == pytest.approx(1.0, abs=1e-5) and smoothed.max() < 0.2
    assert smoothed[0, 16, 16] == smoothed.max()
    assert torch.equal(smooth_maps(impulse, 0), impulse)
    assert anomaly_maps(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8)).shape == (2, 8, 8)


def test_accumulator_reads_each_videos_masks_and_reduces_every_frame():
    masks = [np.zeros((6, 8, 8), np.uint8), np.zeros((6, 8, 8), np.uint8)]
    masks[1][4:, 2:6, 2:6] = 1
    asked = []

    def masks_of(k):
        asked.append(k)
        return masks[k]

    accumulator = PixelAccumulator(masks_of, sigma=0)
    target = torch.zeros(2, 3, 8, 8)
    prediction = target.clone()
    prediction[:, :, 2:6, 2:6] = 0.5  # error exactly on the anomalous square
    accumulator.add(0, np.array([4, 5]), torch.zeros(2, 3, 8, 8), target)  # perfect prediction: max 0
    accumulator.add(1, np.array([4, 5]), prediction, target)
    assert asked == [0, 1]
    assert accumulator.labels == [0, 0, 1, 1]
    result = accumulator.result()
    assert result.auc == 1.0 and result.eer == 0.0


def test_mask_sources(tmp_path):
    names, counts = ["01", "02"], [3, 2]
    masks_of, where = pixel_mask_source(str(tmp_path), "ped2", names, counts)
    assert masks_of is None and "no masks" in where

    folder = tmp_path / "npy"
    folder.mkdir()
    np.save(folder / "01.npy", np.zeros((3, 4, 5), np.uint8))
    np.save(folder / "02.npy", np.ones((2, 4, 5), np.uint8))
    masks_of, where = pixel_mask_source("", "ped2", names, counts, str(folder))
    assert masks_of(1).shape == (2, 4, 5) and masks_of(1).all()
    with pytest.raises(UserError, match="01.npy have 3 frames but test video 01 has 2"):
        pixel_mask_source("", "ped2", names, [2, 2], str(folder))
    with pytest.raises(UserError, match="lacks 03.npy"):
        pixel_mask_source("", "ped2", ["01", "03"], counts, str(folder))

    import cv2
    ucsd = tmp_path / "Test"
    for k, (n, style) in enumerate([(3, "{:03d}.bmp"), (2, "frame{:03d}.bmp")]):  # the naming quirk
        gt = ucsd / f"Test{k + 1:03d}_gt"
        gt.mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(gt / style.format(i + 1)), np.full((4, 5), 255 * (i == 1), np.uint8))
    masks_of, where = pixel_mask_source("", "ped2", names, counts, str(ucsd))
    assert masks_of(1).shape == (2, 4, 5) and masks_of(1)[1].all() and not masks_of(1)[0].any()
    with pytest.raises(UserError, match="2 Test0NN_gt mask folders but there are 3"):
        pixel_mask_source("", "ped2", ["a", "b", "c"], [3, 2, 1], str(ucsd))


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)  # --num_threads=1 below sets it for the whole process


def test_eval_reports_pixel_level_metrics_beside_the_frame_level_ones(small_cfg, tmp_path, capsys, restore_threads):
    """eval.py with --pixel_masks (here: whole-frame masks from the toy labels) and without (no masks)."""
    import json

    from ffpvad.commands import eval as eval_cli
    from ffpvad.data.dataset import TestSet

    test_set = TestSet.load(small_cfg)
    masks = tmp_path / "masks"
    masks.mkdir()
    for name, labels in zip(test_set.videos.names, test_set.labels):
        np.save(masks / f"{name}.npy", np.repeat(labels.astype(np.uint8)[:, None, None], 16, 1).repeat(24, 2))
    flags = [f"--data_root={small_cfg.data_root}", f"--cache_dir={small_cfg.cache_dir}", "--dataset=toy",
             "--img_size=32", "--model=copylast", f"--results_dir={tmp_path / 'r'}", "--plots=false",
             "--eval_batch_size=64", "--num_threads=1"]
    assert eval_cli.main(flags + [f"--pixel_masks={masks}", "--pixel_sigma=1"]) == 0
    out = capsys.readouterr().out
    assert "pixel-level AUC" in out and "pixel-level EER" in out and "micro AUC" in out
    metrics = json.loads((tmp_path / "r" / "toy_copylast" / "metrics.json").read_text())
    assert 0 <= metrics["pixel_auc"] <= 1 and metrics["pixel_n_frames"] == metrics["n_frames"]
    assert metrics["pixel_n_anomalous"] == metrics["n_anomalous"] and metrics["pixel_sigma"] == 1
    assert eval_cli.main(flags) == 0
    import re
    assert re.search(r"pixel-level +no masks", capsys.readouterr().out)
    with pytest.raises(UserError, match="--pixel_sigma=x is not a float"):
        eval_cli.main(flags + ["--pixel_sigma=x"])
