"""Experiments: the glue between the library and ``aevb fit MODEL``.

Each module names the models it fits (``MODELS``), adds their flags (``add_arguments``) and runs a fit
into a run directory (``run``), returning the summary. The CLI knows nothing model-specific.
"""
from __future__ import annotations

from types import ModuleType

from aevb.experiments import fa, gmvae, vae, vrnn

MODULES: tuple[ModuleType, ...] = (fa, vae, gmvae, vrnn)


def module_for(model: str) -> ModuleType:
    return next(m for m in MODULES if model in m.MODELS)
