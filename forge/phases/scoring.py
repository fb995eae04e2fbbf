"""After each phase (run by ``forge.pipeline``, not a phase itself): the scoreboard rows of the phase's output
models, and the gate that hands the phase's input on when its output is worse.

Rows are measured by ``benchmarks.scoreboard`` on ``actors.BenchmarkActor``s and cached by key under
``runs/<name>/scoreboard_cache/`` (an unchanged model is never scored twice, so the inputs' rows cost
nothing); ``runs/<name>/scoreboard.json`` holds every phase's rows and gate decision, written atomically.
A gated phase's handed-on model is an exact copy of its best input under ``<phase>/gated/<output name>``;
its own output stays where the phase wrote it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

from benchmarks.cache import ResultCache
from benchmarks.scoreboard import (LOWER_IS_BETTER, change_text, gate_decision, row_key, thinking_problems,
                                   wikitext_heldout, worse_on_same_items)
from forge.artifacts import atomic_dir, atomic_write_json, read_json, read_manifest
from forge.config import PHASES, PipelineConfig
from forge.data.heldout import HELDOUT, read_texts
from forge.phases.base import declared_text
from forge.tracking import Tracker

log = logging.getLogger(__name__)

SCOREBOARD_FILE = "scoreboard.json"
CACHE_DIR = "scoreboard_cache"
GATED_DIR = "gated"


def read_scoreboard(run_dir: Path) -> dict[str, Any]:
    """The run's scoreboard file, or an empty one."""
    path = Path(run_dir) / SCOREBOARD_FILE
    return read_json(path) if path.is_file() else {"phases": {}}


def format_figure(figure: Mapping[str, Any]) -> str:
    """``value [low, high]`` with a precision that suits the magnitude."""
    def number(x: float) -> str:
        if not math.isfinite(x):
            return str(x)
        return f"{x:.3g}" if abs(x) >= 1e4 or abs(x) < 1e-2 and x != 0 else f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}"
    return f"{number(figure['value'])} [{number(figure['low'])}, {number(figure['high'])}]"


class RunScorer:
    """Scores model directories of one run with one set of items, through the run's row cache."""

    def __init__(self, config: PipelineConfig, run_dir: Path, data_dir: str | None, heldout_path: Path):
        self.config, self.run_dir, self.data_dir = config, Path(run_dir), data_dir
        board = config.scoreboard
        self.settings = board.settings()
        self.heldout_texts = read_texts(heldout_path, board.heldout_chars)
        self.wikitext_texts = wikitext_heldout(data_dir, self.settings)
        self.items = {"heldout": hashlib.sha256(json.dumps(self.heldout_texts).encode()).hexdigest(),
                      "wikitext": hashlib.sha256(json.dumps(self.wikitext_texts).encode()).hexdigest(),
                      "thinking": hashlib.sha256(json.dumps(thinking_problems(self.settings)).encode()).hexdigest(),
                      "data_dir": data_dir}
        self.cache = ResultCache(self.run_dir / CACHE_DIR)

    def rows(self, model_dirs: Mapping[str, Path]) -> dict[str, dict[str, Any]]:
        """``{name: row}``: cached rows as stored, the others measured at once on benchmark actors."""
        from actors.benchmark_actor import score_model_dirs

        keys = {name: row_key(read_manifest(path), self.settings, self.items) for name, path in model_dirs.items()}
        found = {name: self.cache.get(key) for name, key in keys.items()}
        missing = {name: model_dirs[name] for name, row in found.items() if row is None}
        measured = score_model_dirs(missing, self.settings, heldout_texts=self.heldout_texts,
                                    wikitext_texts=self.wikitext_texts, data_dir=self.data_dir,
                                    device=self.config.device)
        rows = {}
        for name, path in model_dirs.items():
            row = found[name]
            if row is None:
                row = {**measured[name], "weights_sha256": read_manifest(path)["weights_sha256"]}
                self.cache.put(keys[name], row)
            rows[name] = {**row, "path": Path(path).resolve().relative_to(self.run_dir.resolve()).as_posix(),
                          "cached": found[name] is not None}
        return rows


def _hand_on_input(phase_dir: Path, output_name: str, source: Path) -> Path:
    """An exact copy of the input model directory (same files, same digest) as this phase's output."""
    target = phase_dir / GATED_DIR / output_name
    with atomic_dir(target) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
    return target


def judge(output: Mapping[str, Any], input_rows: Mapping[str, Mapping[str, Any]], metric: str,
          also_on: Sequence[str], tolerance: float, **bootstrap: Any) -> dict[str, Any]:
    """The gate's decision: ``metric``'s :func:`gate_decision`, worse when the output is worse on ``metric`` or on
    any of ``also_on``; the input handed on is the best one on the first figure the output is worse on.
    ``by_metric`` holds every figure's own decision and ``worse_on`` the figures that made it worse; ``bootstrap``
    (resamples, seed, confidence) goes to each figure's paired change."""
    by_metric = {name: gate_decision(output, input_rows, name, tolerance, **bootstrap)
                 for name in dict.fromkeys([metric, *also_on])}
    worse_on = [name for name, decision in by_metric.items() if decision["worse"]]
    decision = {**by_metric[metric], "worse": bool(worse_on), "worse_on": worse_on, "by_metric": by_metric}
    if worse_on:
        decision["best_input"] = by_metric[worse_on[0]]["best_input"]
    return decision


def score_phase(config: PipelineConfig, run_dir: Path, phase: str, phase_dir: Path, outputs: dict[str, Path],
                inputs: Mapping[str, Path], data_dir: str | None,
                texts: Mapping[str, Path]) -> tuple[dict[str, Path], dict[str, Any], dict[str, dict[str, Any]]]:
    """Score the phase's outputs, apply the gate, record both in scoreboard.json.

    ``texts``: the run's declared text outputs (Phase 1's held-out documents are the perplexity items).
    Returns the outputs to hand on (an input replaces a gated output), the manifest's summary entry (values only)
    and each output's figures with their intervals (``{name: {metric: figure}}``, what criteria judge).
    """
    board = config.scoreboard
    if (phase_dir / GATED_DIR).exists():  # an earlier decision's copies (re-gating after a settings change)
        shutil.rmtree(phase_dir / GATED_DIR)
    scorer = RunScorer(config, run_dir, data_dir, declared_text(dict(texts), HELDOUT, run_dir))
    rows = scorer.rows(outputs)
    metric = board.primary_metric
    entry: dict[str, Any] = {"models": rows, "primary_metric": metric, "gate": None, "handed_on": {}}
    handed_on = dict(outputs)
    if board.gate and inputs:
        input_rows = scorer.rows(inputs)
        entry["input_rows"] = input_rows
        decisions = {}
        for name in outputs:
            decision = judge(rows[name], input_rows, metric, board.gate_also_on, board.tolerance,
                             resamples=board.bootstrap_resamples, seed=board.seed, confidence=board.confidence)
            if decision["worse"]:
                handed_on[name] = _hand_on_input(phase_dir, name, inputs[decision["best_input"]])
                decision["handed_on"] = f"input {decision['best_input']}"
            else:
                decision["handed_on"] = "output"
            decisions[name] = decision
        entry["gate"] = decisions
    entry["handed_on"] = {name: Path(path).resolve().relative_to(Path(run_dir).resolve()).as_posix()
                          for name, path in handed_on.items()}
    scoreboard = read_scoreboard(run_dir)
    scoreboard["settings"] = {**board.__dict__}
    scoreboard["phases"][phase] = entry  # stored with sorted keys; readers order phases by forge.phases.PHASES
    atomic_write_json(Path(run_dir) / SCOREBOARD_FILE, scoreboard)
    for line in console_lines(phase, entry, metric):
        print(line, flush=True)
    summary = {"primary_metric": metric,
               "rows": {name: {k: v["value"] for k, v in row["metrics"].items()} for name, row in rows.items()},
               "gate": entry["gate"], "handed_on": entry["handed_on"]}
    return handed_on, summary, {name: row["metrics"] for name, row in rows.items()}


def console_lines(phase: str, entry: Mapping[str, Any], metric: str) -> list[str]:
    """The scoreboard's headline of a phase, and what the gate did."""
    lines = []
    for name, row in entry["models"].items():
        figures = row["metrics"]
        extra = ", ".join(f"{key} {format_figure(figures[key])}" for key in ("task_accuracy", "tool_accuracy")
                          if key in figures and key != metric)
        how = "cached" if row["cached"] else f"{row['score_s']:.0f} s"
        lines.append(f"[forge] {phase}: scoreboard {name}: {metric} {format_figure(figures[metric])}"
                     f"{' (lower is better)' if metric in LOWER_IS_BETTER else ''}; {extra}; {how}")
    for name, decision in (entry["gate"] or {}).items():
        judged = decision["by_metric"]
        if decision["worse"]:
            worse = "; ".join(f"{key} {format_figure(judged[key]['output'])} vs {format_figure(judged[key]['input'])}"
                              for key in decision["worse_on"])
            lines.append(f"[forge] {phase}: GATE: output {name} is worse than input {decision['best_input']} on "
                         f"{worse}; handing on the input instead ({entry['handed_on'][name]})")
        else:
            figures = " and ".join(f"{key} ({format_figure(d['output'])} vs {format_figure(d['input'])}"
                                   f"{same_items_text(d)})" for key, d in judged.items())
            lines.append(f"[forge] {phase}: gate passed: {name} not worse than input {decision['best_input']} beyond "
                         f"the intervals on {figures}")
            worse = worse_on_same_items(judged)
            if worse:
                lines.append(f"[forge] {phase}: note: {name} is worse than input {decision['best_input']} on the "
                             f"same items: {'; '.join(worse)}; the gate passed it because it compares the two figures' "
                             "own intervals, which overlap")
    return lines


def same_items_text(decision: Mapping[str, Any]) -> str:
    """``; change on the same items -0.133 [-0.211, -0.056]`` for a figure with a paired change, else ``""``."""
    change = decision.get("paired_change")
    if change is None:
        return ""
    return f"; change on the same items {change_text(change)}"


def scoreboard_table(scoreboard: Mapping[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The scoreboard as columns and rows: one row per scored model, each figure with its interval, and the gate."""
    phases = scoreboard["phases"]  # stored with sorted keys: shown in pipeline order
    entries = [(phase, name, row, (phases[phase].get("gate") or {}).get(name),
                phases[phase].get("handed_on", {}).get(name))
               for phase in PHASES if phase in phases for name, row in phases[phase]["models"].items()]
    metrics = sorted({key for _, _, row, _, _ in entries for key in row["metrics"]})
    columns = ["phase", "model", *(f"{m}{part}" for m in metrics for part in ("", "_low", "_high")),
               "gate", "handed_on"]
    rows = []
    for phase, name, row, gate, handed_on in entries:
        figures = [row["metrics"][m][part] if m in row["metrics"] else None
                   for m in metrics for part in ("value", "low", "high")]
        verdict = "-" if gate is None else f"worse: input {gate['best_input']} handed on" if gate["worse"] else "passed"
        rows.append([phase, name, *figures, verdict, handed_on])
    return columns, rows


def track_phase(config: PipelineConfig, run_dir: Path, phase: str, outputs: Mapping[str, Path]) -> None:
    """Log a finished phase to the run's tracking (``runs/<name>/metrics.jsonl``, and an offline wandb run unless
    tracking is off): the scoreboard so far as a table, and each model the phase hands on as a model artifact."""
    tracker = Tracker(run_dir, name=f"{phase}-outputs", config=config.tracking, group=Path(run_dir).name,
                      run_config={"phase": phase})
    scoreboard = read_scoreboard(run_dir)
    if config.scoreboard.enabled and phase in scoreboard["phases"]:
        tracker.log_table("scoreboard/phases", *scoreboard_table(scoreboard))
    for name, path in outputs.items():
        metadata = {"phase": phase, "output": name, "weights_sha256": read_manifest(path)["weights_sha256"]}
        tracker.log_artifact(f"{phase}-{name}", "model", path, metadata)
    tracker.finish()
