"""Evaluation: prediction over a test set and its artifacts (``evaluate``), frame scores, metrics, anomaly maps,
the causal calibration and the scene guard."""
