"""The pipeline's phases, in order. Each is the module ``forge/phases/<name>.py`` with ``run(ctx)``."""
from __future__ import annotations

import importlib

from forge.config import PHASES


def load_phase(name: str):
    """The ``run(ctx) -> PhaseResult`` function of phase ``name``."""
    if name not in PHASES:
        raise KeyError(f"unknown phase '{name}'; valid phases: {', '.join(PHASES)}")
    return importlib.import_module(f"forge.phases.{name}").run


def load_scored_criteria(name: str):
    """Phase ``name``'s ``scored_criteria(config, figures) -> criteria``, for criteria measured on its scoreboard
    figures (``{model: {metric: {"value", "low", "high", ...}}}``), or None when it has none."""
    load_phase(name)
    return getattr(importlib.import_module(f"forge.phases.{name}"), "scored_criteria", None)
