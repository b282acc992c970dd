"""Frozen optical-flow estimators, registered by name (ffpvad/flow/core.py holds the registry and the shared helpers);
importing the package registers every estimator below."""
from ffpvad.flow.core import (AUTO_ORDER, FALLBACK, FLOWNETS, WEIGHT_FILES, build_flownet, find_weights, freeze,
                          register_flownet, resize_flow, resolve_flownet_name, store_weights_in)
from ffpvad.flow import flownet2sd, lucaskanade, spynet  # noqa: E402,F401  (registration)

__all__ = ["AUTO_ORDER", "FALLBACK", "FLOWNETS", "WEIGHT_FILES", "build_flownet", "find_weights", "freeze",
           "register_flownet", "resize_flow", "resolve_flownet_name", "store_weights_in"]
