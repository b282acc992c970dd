"""Methods, registered by name: what a generator is trained to output, with which losses, and how its frames are
scored (the contract is in ffpvad/methods/base.py; docs/extending.md adds one).

``prediction`` (FFP, Liu et al., CVPR 2018; generators ffp, stemgan and the baselines): clip -> next frame, the FFP
losses, score = -PSNR.  ``skipganomaly`` (Akcay et al., IJCNN 2019): frame -> the same frame, adversarial +
contextual + latent losses, score = lambda * reconstruction MSE + (1 - lambda) * latent MSE.  ``f2lm`` and
``destroyer`` (MAMA, Hong et al., IEEE Access 2024): the F2LM generator's prediction with triplet losses, then a
Destroyer trained against it; score = weighted z-scored errors and triplet hinges.
"""
from ffpvad.methods.base import (METHODS, Method, TrainingContext, detectable_models, first_stage, frozen_discriminator,
                                method_for, method_of, method_of_model, model_settings, trainable_generator)
from ffpvad.methods.prediction import PredictionMethod
from ffpvad.methods.skipganomaly import SkipGANomalyMethod
from ffpvad.methods.mama import DestroyerMethod, F2LMMethod

__all__ = ["METHODS", "Method", "TrainingContext", "detectable_models", "first_stage", "frozen_discriminator", "method_for", "method_of",
           "method_of_model", "model_settings", "trainable_generator", "PredictionMethod", "SkipGANomalyMethod",
           "F2LMMethod", "DestroyerMethod"]
