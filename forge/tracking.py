"""Metrics: always a local ``metrics.jsonl``; wandb too unless tracking is off (then a no-op)."""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal


@dataclass
class TrackingConfig:
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    """wandb mode: offline (default, synced later with `wandb sync`), online, or disabled."""
    project: str = "agent-forge"
    """wandb project name."""


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them visible rather than dropping them
    return value


class Tracker:
    """Log a run's metrics to ``<dir>/metrics.jsonl`` and, if enabled, to a wandb run."""

    def __init__(self, directory: Path, *, name: str, config: TrackingConfig,
                 run_config: dict[str, Any] | None = None, group: str | None = None):
        self.path = Path(directory) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.name = name
        self._wandb_run = None
        mode = os.environ.get("WANDB_MODE", config.wandb_mode)
        if mode != "disabled":
            import wandb

            self._wandb_run = wandb.init(
                project=config.project, name=name, group=group, mode=mode, dir=str(self.path.parent),
                config=run_config or {}, reinit="create_new",
            )

    def _append(self, metrics: dict[str, Any], step: int | None = None) -> None:
        record = {"time": time.time(), "source": self.name, **({"step": step} if step is not None else {}),
                  **{k: _clean(v) for k, v in metrics.items()}}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=str) + "\n")

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self._append(metrics, step)
        if self._wandb_run is not None:
            self._wandb_run.log(metrics, step=step)

    def log_artifact(self, name: str, kind: str, path: Path, metadata: dict[str, Any] | None = None) -> None:
        """Record a file or directory as a versioned artifact: a wandb.Artifact when wandb is on, and always
        a line in metrics.jsonl (``artifact``, ``artifact_type``, ``artifact_path``)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"artifact {name!r}: {path} does not exist")
        self.log({"artifact": name, "artifact_type": kind, "artifact_path": str(path), **(metadata or {})})
        if self._wandb_run is not None:
            import wandb

            artifact = wandb.Artifact(name=name, type=kind, metadata=metadata or {})
            if path.is_dir():
                artifact.add_dir(str(path))
            else:
                artifact.add_file(str(path))
            self._wandb_run.log_artifact(artifact)

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        """A table under ``key``: a wandb.Table when wandb is on, and always a line in metrics.jsonl."""
        self._append({key: {"columns": columns, "rows": [[_clean(v) for v in row] for row in rows]}})
        if self._wandb_run is not None:
            import wandb

            self._wandb_run.log({key: wandb.Table(columns=columns, data=rows)})

    def finish(self) -> None:
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` (a torn last line from a killed process is ignored)."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.endswith("\n"):
                records.append(json.loads(line))
    return records


class MetricsTail:
    """The records appended to a ``metrics.jsonl`` since the last call (another process may be writing it)."""

    def __init__(self, path: Path):
        self.path, self.offset = Path(path), 0

    def new_records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        complete = data[:data.rfind(b"\n") + 1]  # a line still being written is read next time
        self.offset += len(complete)
        return [json.loads(line) for line in complete.decode("utf-8").splitlines() if line]
