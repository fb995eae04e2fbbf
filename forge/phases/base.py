"""The small protocol every phase follows: ``run(ctx) -> PhaseResult``."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from forge.config import PipelineConfig
from forge.tracking import Tracker


@dataclass
class PhaseContext:
    """What a phase gets from the runner."""

    config: PipelineConfig
    run_dir: Path
    phase_dir: Path
    """The phase's own folder: outputs, checkpoints (under work/), metrics.jsonl."""
    inputs: dict[str, Path]
    """Model directories written by the previous phase (empty for the first phase)."""
    texts: dict[str, Path] = field(default_factory=dict)
    """Text files declared by earlier phases of this run (Phase 1: ``heldout``, ``replay``), verified against
    the hashes in their manifests."""

    def read_texts(self, name: str, max_chars: int) -> list[str]:
        """Up to ``max_chars`` characters of the declared text output ``name`` (``forge.data.heldout``)."""
        from forge.data.heldout import read_texts

        return read_texts(declared_text(self.texts, name, self.run_dir), max_chars)

    def tracker(self, name: str, run_config: dict[str, Any] | None = None) -> Tracker:
        return Tracker(self.phase_dir, name=name, config=self.config.tracking, run_config=run_config,
                       group=self.run_dir.name)

    @property
    def data_dir(self) -> str | None:
        """The reference data folder: ``data.data_dir``, else $FORGE_DATA_DIR, else None (offline)."""
        from forge.data.readers import DATA_DIR_ENV

        return self.config.data.data_dir or os.environ.get(DATA_DIR_ENV) or None

    @property
    def work_dir(self) -> Path:
        """Checkpoints and intermediate files; kept across a crash so the phase can resume."""
        path = self.phase_dir / "work"
        path.mkdir(parents=True, exist_ok=True)
        return path


def declared_text(texts: dict[str, Path], name: str, run_dir: Path) -> Path:
    """The file of the declared text output ``name``, or a clear error if no finished phase declared it."""
    if name not in texts:
        raise FileNotFoundError(f"this phase reads Phase 1's '{name}' texts, but no finished phase of {run_dir} "
                                "declares them: run the cognate phase in this run directory first "
                                "(python -m forge.pipeline --phases cognate,...)")
    return texts[name]


@dataclass
class PhaseResult:
    outputs: dict[str, Path]
    """Model directories the phase wrote (all under the phase folder); the next phase's inputs."""
    summary: dict[str, Any] = field(default_factory=dict)
    """Measured figures and checks, recorded in the phase manifest."""
    texts: dict[str, Path] = field(default_factory=dict)
    """Text files the phase writes for every later phase (under the phase folder); hashed in its manifest."""


MODEL_NAMES = ("champion", "model")
"""Names under which a phase hands on its one model (EvoMerge: champion; the later phases: model)."""


def single_input(inputs: dict[str, Path]) -> str | None:
    """The one rule for which of the previous phase's models a phase works on: its only model, else the one named
    ``champion``, else ``model``; None when it wrote several under other names (Phase 1's three)."""
    if len(inputs) == 1:
        return next(iter(inputs))
    return next((name for name in MODEL_NAMES if name in inputs), None)


class Phase(Protocol):
    def __call__(self, ctx: PhaseContext) -> PhaseResult: ...


PhaseFn = Callable[[PhaseContext], PhaseResult]
