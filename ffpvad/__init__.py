"""ffpvad: video anomaly detection by future-frame prediction with GANs (FFP, STem-GAN, Skip-GANomaly, MAMA).

The library, by what it does (docs/design.md):

- ``ffpvad.config``, ``ffpvad.cli``, ``ffpvad.registry``: the one frozen ``Config``, its flags, the name registry
- ``ffpvad.data``: the prepared layout, frame files, labels, frame sources, the toy set, pseudo-anomalies, preparation
- ``ffpvad.models``, ``ffpvad.losses``, ``ffpvad.flow``, ``ffpvad.methods``: networks, losses, flow estimators, methods
- ``ffpvad.training``: the training loop, measured precision, torchrun, logs
- ``ffpvad.evaluation``: prediction over a test set, scores, metrics, localization, calibration, the scene guard
- ``ffpvad.detection``: the streaming predictor and the marked video
- ``ffpvad.webapp``: the operator's page
- ``ffpvad.commands``: the command lines (``ffpvad-train``, ``ffpvad-eval``, ``ffpvad-detect``, ``ffpvad-app``,
  ``ffpvad-prepare``); ``train.py``, ``eval.py``, ``detect.py`` and ``app.py`` at the repository root run them too.

Importing the package imports nothing heavy (no torch): pick the module you need.
"""
__version__ = "0.9.0"
