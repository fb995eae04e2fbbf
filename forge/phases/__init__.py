"""The pipeline's phases, in order. Each is the module ``forge/phases/<name>.py`` with ``run(ctx)``."""
from __future__ import annotations

import importlib

from forge.config import PHASES


def load_phase(name: str):
    """The ``run(ctx) -> PhaseResult`` function of phase ``name``."""
    if name not in PHASES:
        raise KeyError(f"unknown phase '{name}'; valid phases: {', '.join(PHASES)}")
    return importlib.import_module(f"forge.phases.{name}").run
