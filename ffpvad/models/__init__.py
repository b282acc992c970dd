"""Generators and discriminators, registered by name (ffpvad/models/registry.py); importing the package registers every
network below.  Networks only: how they are trained and scored is their method's (``ffpvad/methods/``)."""
from ffpvad.models.registry import (DISCRIMINATORS, GENERATORS, build_discriminator, build_generator, is_trainable,
                             register_discriminator, register_generator)
from ffpvad.models import baselines, discriminator, f2lm, ffp, semantic, skipganomaly, stemgan  # noqa: F401  (registration)

__all__ = ["DISCRIMINATORS", "GENERATORS", "build_discriminator", "build_generator", "is_trainable",
           "register_discriminator", "register_generator"]
