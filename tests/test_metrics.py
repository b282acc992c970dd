"""Metric functions against values worked out by hand."""
import math

import numpy as np
import pytest
import torch

from ffpvad.evaluation.metrics import anomaly_scores, equal_error_rate, frame_metrics, macro_auc, micro_auc, psnr


def test_psnr_hand_worked():
    # [-1, 1] images differing by 0.2 everywhere -> 0.1 on [0, 1] -> MSE 0.01 -> 20 dB.
    target = torch.zeros(2, 3, 4, 4)
    prediction = target + 0.2
    assert torch.allclose(psnr(prediction, target), torch.tensor([20.0, 20.0]), atol=1e-4)


def test_psnr_of_a_perfect_prediction_is_capped_not_infinite():
    x = torch.rand(1, 3, 8, 8)
    assert psnr(x, x).item() == 100.0


def test_anomaly_scores_min_max():
    # PSNR 30, 20, 25 -> regularity 1, 0, 0.5 -> anomaly 0, 1, 0.5
    assert np.allclose(anomaly_scores(np.array([30.0, 20.0, 25.0])), [0.0, 1.0, 0.5])


def test_constant_psnr_video_scores_the_middle():
    assert np.array_equal(anomaly_scores(np.array([27.0, 27.0, 27.0])), [0.5, 0.5, 0.5])


def test_micro_auc_hand_worked():
    # positives scored 0.9 and 0.4, negatives 0.6 and 0.1: pairs (pos > neg) = 3 of 4 -> 0.75
    scores = [np.array([0.9, 0.6]), np.array([0.4, 0.1])]
    labels = [np.array([1, 0]), np.array([1, 0])]
    assert micro_auc(scores, labels) == pytest.approx(0.75)


def test_micro_auc_single_class_is_nan():
    assert math.isnan(micro_auc([np.array([0.1, 0.2])], [np.array([1, 1])]))


def test_macro_auc_excludes_single_class_videos_and_says_so():
    scores = [np.array([0.9, 0.1, 0.5]), np.array([0.2, 0.3]), np.array([0.1, 0.8])]
    labels = [np.array([1, 0, 0]), np.array([1, 1]), np.array([1, 0])]  # AUCs 1.0, -, 0.0
    result = macro_auc(scores, labels, "exclude")
    assert result.value == pytest.approx(0.5)
    assert result.videos_used == 2 and result.single_class_videos == (1,)


def test_macro_auc_pad_rule():
    # Video anomalous throughout, scores 0.2, 0.3, padded with (0.0, normal) and (1.0, anomalous):
    # positives 0.2, 0.3, 1.0 vs the one negative 0.0 -> AUC 1.0.
    result = macro_auc([np.array([0.2, 0.3])], [np.array([1, 1])], "pad")
    assert result.value == pytest.approx(1.0) and result.videos_used == 1


def test_eer_perfect_and_inverted_and_interpolated():
    y = np.array([0, 0, 1, 1])
    assert equal_error_rate(np.array([0.1, 0.2, 0.8, 0.9]), y) == pytest.approx(0.0)
    assert equal_error_rate(np.array([0.9, 0.8, 0.2, 0.1]), y) == pytest.approx(1.0)
    # scores: neg 0.1, 0.6; pos 0.4, 0.9. ROC points (fpr, tpr): (0,0) (0,.5) (.5,.5) (.5,1) (1,1).
    # fnr - fpr: 1, .5, 0 -> crosses exactly at (0.5, 0.5): EER 0.5.
    assert equal_error_rate(np.array([0.1, 0.6, 0.4, 0.9]), y) == pytest.approx(0.5)


def test_eer_interpolates_between_roc_points():
    # neg 0.1, 0.5; pos 0.3, 0.9, 0.95 -> ROC (0,0) (0,1/3) (0,2/3) (.5,2/3) (.5,1) (1,1).
    # fnr - fpr is +1/3 at (0, 2/3) and -1/6 at (.5, 2/3): the crossing is 2/3 of the way -> EER = 1/3.
    y = np.array([0, 0, 1, 1, 1])
    assert equal_error_rate(np.array([0.1, 0.5, 0.3, 0.9, 0.95]), y) == pytest.approx(1 / 3)


def test_frame_metrics_end_to_end_on_two_videos():
    psnr_values = [np.array([30.0, 20.0, 30.0]), np.array([25.0, 25.0])]
    labels = [np.array([0, 1, 0]), np.array([1, 1])]
    result, scores = frame_metrics(psnr_values, labels)
    assert np.allclose(scores[0], [0, 1, 0]) and np.allclose(scores[1], [0.5, 0.5])
    # positives 1, .5, .5 ; negatives 0, 0 -> AUC 1
    assert result.micro_auc == pytest.approx(1.0)
    assert result.n_frames == 5 and result.n_anomalous == 3
    assert result.macro.single_class_videos == (1,)
