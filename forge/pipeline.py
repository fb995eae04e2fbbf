"""Run the pipeline: ``python -m forge.pipeline [--preset NAME] [--phases a,b] [--out DIR] [--set k=v] [--strict]``.

With no arguments: the embedded ``tiny`` preset (CPU, offline, minutes), written to ``runs/tiny``.
Re-running the same command resumes: a phase whose manifest matches its config, its inputs and the
hashes of its outputs is skipped; anything missing, truncated or altered is redone.
Each phase records the spec's criteria as met or missed and the run goes on; with ``--strict``
(``strict_criteria``) the first missed criterion stops it with exit code 3.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from actors.restarts import ActorLost
from forge.artifacts import (MANIFEST, StorageFull, atomic_write_json, model_dir_problems, read_json,
                             read_manifest, sha256_file)
from forge.config import RUN_VERSIONS_KEY, PipelineConfig, load_pipeline_config
from forge.configtools import ConfigError, config_hash, to_dict
from forge.criteria import criteria_line, describe, missed
from forge.versions import package_versions, versions_line

if TYPE_CHECKING:
    from forge.phases.base import PhaseResult

log = logging.getLogger("forge.pipeline")

PHASE_KIND = "agent-forge/phase"
PHASE_PURPOSE = {
    "cognate": "pretrain the Cognate models from scratch on Ray actors",
    "evomerge": "merge the models into one champion by evolution (Ray Tune)",
    "quietstar": "add thinking tokens, bake the reasoning format, RL on thoughts",
    "bitnet": "compress to ternary weights under the accuracy guard",
    "curriculum": "train curriculum levels and bake the value prompts",
    "tool_persona": "optimize the tool prompt and persona in A/B cycles",
}
"""What each phase will do: the console's phase start line."""


class PipelineError(RuntimeError):
    """A phase cannot run (for example its input phase has not finished)."""


class Stopped(KeyboardInterrupt):
    """The driver was asked to stop (SIGTERM or Ctrl+C); raised where it was, so the phase records it and keeps
    its checkpoints. A KeyboardInterrupt: inside ``ray.wait``/``ray.get`` Ray passes only that on (as a plain one)."""


_stop_signals: list[int] = []  # what the SIGTERM handler received, for the message


def _raise_stopped(signum: int, frame: Any) -> None:
    signal.signal(signum, signal.SIG_IGN)  # a second signal must not interrupt the clean-up
    _stop_signals.append(signum)
    raise Stopped(_stop_reason())


def _stop_reason() -> str:
    return f"stopped by {signal.Signals(_stop_signals[-1]).name}" if _stop_signals else "stopped by Ctrl+C"


class CriterionMissed(RuntimeError):
    """With ``strict_criteria``: a finished phase missed one of the spec's criteria."""


def check_criteria(phase: str, summary: dict[str, Any]) -> None:
    """Raise :class:`CriterionMissed` naming the phase's first missed criterion by name (the order of the console
    line, the manifest and the report, fresh or resumed) and its measured value."""
    criteria = summary.get("criteria", {})
    names = missed(criteria)
    if names:
        others = f" (also missed: {', '.join(names[1:])})" if names[1:] else ""
        raise CriterionMissed(f"{phase}: spec criterion {describe(names[0], criteria[names[0]])}{others}; "
                              "the phase's outputs are kept; run without --strict to record it and go on")


def phase_config_hash(config: PipelineConfig, phase: str) -> str:
    """What a phase's result depends on besides its inputs: its own section, data sources, seed."""
    return config_hash({"phase": getattr(config, phase, None) and to_dict(getattr(config, phase)),
                        "data": to_dict(config.data), "seed": config.seed, "device": config.device})


def scoreboard_hash(config: PipelineConfig) -> str:
    """What a finished phase's scoreboard rows and gate decision depend on besides its outputs: the scoreboard
    section. Kept apart from :func:`phase_config_hash`, so a change re-scores and re-gates a finished phase
    without redoing it."""
    return config_hash({"scoreboard": to_dict(config.scoreboard)})


def _output_digests(phase_dir: Path, outputs: dict[str, Path]) -> dict[str, dict[str, str]]:
    return {name: {"path": Path(path).relative_to(phase_dir).as_posix(),
                   "digest": read_manifest(path)["digest"]} for name, path in outputs.items()}


def _text_digests(phase_dir: Path, texts: dict[str, Path]) -> dict[str, dict[str, str]]:
    return {name: {"path": Path(path).relative_to(phase_dir).as_posix(), "digest": sha256_file(Path(path))}
            for name, path in texts.items()}


def _changed_texts(phase_dir: Path, manifest: dict[str, Any]) -> list[str]:
    """The declared text outputs of a finished phase that are missing or differ from their recorded hash."""
    return [name for name, entry in manifest.get("texts", {}).items()
            if not (phase_dir / entry["path"]).is_file() or sha256_file(phase_dir / entry["path"]) != entry["digest"]]


def declared_texts(run_dir: Path, before: str | None = None) -> dict[str, Path]:
    """``{name: file}``: the text outputs declared by the finished phases of ``run_dir`` (those before phase
    ``before``, else all), each verified against its manifest's hash. Later phases get these, not paths of
    their own making."""
    return {name: path for name, (path, _) in _declared_text_entries(run_dir, before).items()}


def _declared_text_entries(run_dir: Path, before: str | None) -> dict[str, tuple[Path, str]]:
    """``{name: (file, verified SHA-256)}`` of :func:`declared_texts`."""
    from forge.phases import PHASES

    texts: dict[str, tuple[Path, str]] = {}
    for phase in PHASES[:PHASES.index(before)] if before else PHASES:
        manifest_path = Path(run_dir) / phase / MANIFEST
        if not manifest_path.is_file() or (manifest := read_json(manifest_path)).get("status") != "complete":
            continue
        changed = _changed_texts(manifest_path.parent, manifest)
        if changed:
            raise PipelineError(f"{manifest_path.parent}: the {', '.join(changed)} text output(s) are missing or "
                                f"changed since the phase wrote them; run --phases {phase},... again to redo it")
        texts.update({name: (manifest_path.parent / entry["path"], entry["digest"])
                      for name, entry in manifest.get("texts", {}).items()})
    return texts


def read_run_texts(run_dir: Path, name: str, max_chars: int) -> list[str]:
    """Up to ``max_chars`` characters of a finished run's declared text output ``name`` (for scripts)."""
    from forge.data.heldout import read_texts
    from forge.phases.base import declared_text

    return read_texts(declared_text(declared_texts(run_dir), name, Path(run_dir)), max_chars)


def finished_outputs(phase_dir: Path) -> dict[str, Path] | None:
    """The verified outputs of a finished phase, or None if it is unfinished, failed or altered."""
    manifest_path = phase_dir / MANIFEST
    if not manifest_path.is_file():
        return None
    manifest = read_json(manifest_path)
    if manifest.get("status") != "complete":
        return None
    changed = _changed_texts(phase_dir, manifest)
    if changed:
        log.warning("%s: text output(s) %s missing or changed; the phase will be redone", phase_dir.name,
                    ", ".join(changed))
        return None
    return _verified(phase_dir, manifest["outputs"])


def _verified(phase_dir: Path, entries: dict[str, dict[str, str]]) -> dict[str, Path] | None:
    """The model directories of manifest ``entries`` (name: path and digest), or None if any is missing or altered."""
    outputs = {}
    for name, entry in entries.items():
        path = phase_dir / entry["path"]
        problems = model_dir_problems(path)
        if problems or read_manifest(path)["digest"] != entry["digest"]:
            log.warning("%s: output %s is not usable (%s); the phase will be redone", phase_dir.name, name,
                        "; ".join(problems) or "digest changed")
            return None
        outputs[name] = path
    return outputs


def _phase_is_current(phase_dir: Path, cfg_hash: str, input_digests: dict[str, str],
                      text_digests: dict[str, str]) -> dict[str, Path] | None:
    """The verified models the finished phase itself wrote (before the gate), or None if it must be redone."""
    if finished_outputs(phase_dir) is None:
        return None
    manifest = read_json(phase_dir / MANIFEST)
    if (manifest["config_hash"] != cfg_hash or manifest["inputs"] != input_digests
            or manifest.get("input_texts", {}) != text_digests or "phase_outputs" not in manifest):
        return None
    return _verified(phase_dir, manifest["phase_outputs"])


def _scored(config: PipelineConfig, run_dir: Path, phase: str, phase_dir: Path, result: PhaseResult,
            inputs: dict[str, Path], data_dir: str | None, texts: dict[str, Path]) -> PhaseResult:
    """The phase's result after the scoreboard and the gate (unchanged with the scoreboard off); ``texts``: the
    declared texts of earlier phases (the phase's own are in ``result``)."""
    from forge.phases import load_scored_criteria
    from forge.phases.scoring import score_phase

    if not config.scoreboard.enabled:
        return result
    scored = time.time()
    outputs, board, figures = score_phase(config, run_dir, phase, phase_dir, result.outputs, inputs, data_dir,
                                          {**texts, **result.texts})
    board["wall_s"] = round(time.time() - scored, 2)
    summary = {**result.summary, "scoreboard": board}
    scored_criteria = load_scored_criteria(phase)
    if scored_criteria is not None:
        criteria = {**summary.get("criteria", {}), **scored_criteria(config, figures)}
        summary.update(criteria=criteria, criteria_missed=missed(criteria))
    return dataclasses.replace(result, outputs=outputs, summary=summary)


def _prepare_phase_dir(phase_dir: Path, cfg_hash: str, input_digests: dict[str, str],
                       text_digests: dict[str, str]) -> None:
    """Keep checkpoints of an interrupted attempt with the same config and inputs; clear anything else."""
    attempt_path = phase_dir / "attempt.json"
    attempt = {"config_hash": cfg_hash, "inputs": input_digests, "input_texts": text_digests}
    if phase_dir.exists():
        previous = read_json(attempt_path) if attempt_path.is_file() else None
        if previous != attempt:
            log.info("%s: config or inputs changed since the last attempt; starting it afresh", phase_dir.name)
            shutil.rmtree(phase_dir)
    phase_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(attempt_path, attempt)


def _input_phase(name: str, selected: list[str]) -> str | None:
    """The phase whose models ``name`` consumes: the nearest earlier phase run in this invocation, else (when
    it runs alone or first) the phase just before it in pipeline order. None for the first phase."""
    from forge.phases import PHASES

    earlier = list(PHASES[:PHASES.index(name)])
    chosen = [phase for phase in earlier if phase in selected]
    if chosen:
        return chosen[-1]
    return earlier[-1] if earlier else None


def run_pipeline(config: PipelineConfig) -> Path:
    """Run ``config.phases`` in order inside one run directory; returns the run directory."""
    from cluster.runtime import connect
    from forge.phases import load_phase
    from forge.phases.base import PhaseContext, PhaseResult
    from forge.phases.scoring import track_phase
    from forge.report import build_report, criteria_tally

    run_dir = Path(config.out_dir) / (config.run_name or config.preset)
    run_dir.mkdir(parents=True, exist_ok=True)
    versions = package_versions()
    print(f"[forge] versions: {versions_line(versions)}", flush=True)
    atomic_write_json(run_dir / "config.json", {**to_dict(config), RUN_VERSIONS_KEY: versions})
    how = connect(config.ray)
    log.info("Ray: %s", how)

    for name in config.phases:
        phase_dir = run_dir / name
        input_phase = _input_phase(name, config.phases)
        inputs: dict[str, Path] = {}
        if input_phase is not None:
            found = finished_outputs(run_dir / input_phase)
            if found is None:
                raise PipelineError(f"phase '{name}' needs the finished outputs of '{input_phase}' in {run_dir}; "
                                    f"run with --phases {input_phase},{name}")
            inputs = found
        text_entries = _declared_text_entries(run_dir, before=name)
        texts = {k: path for k, (path, _) in text_entries.items()}
        text_digests = {k: digest for k, (_, digest) in text_entries.items()}
        input_digests = {k: read_manifest(v)["digest"] for k, v in inputs.items()}
        cfg_hash, board_hash = phase_config_hash(config, name), scoreboard_hash(config)
        own_outputs = _phase_is_current(phase_dir, cfg_hash, input_digests, text_digests)
        if own_outputs is not None:
            manifest = read_json(phase_dir / MANIFEST)
            if manifest.get("scoreboard_hash") != board_hash:
                print(f"[forge] {name}: the scoreboard settings changed since it finished; re-scoring and re-gating "
                      f"its outputs (the phase itself is not redone)", flush=True)
                summary = {k: v for k, v in manifest["summary"].items() if k != "scoreboard"}
                own_texts = {n: phase_dir / e["path"] for n, e in manifest.get("texts", {}).items()}
                data_dir = PhaseContext(config=config, run_dir=run_dir, phase_dir=phase_dir, inputs=inputs).data_dir
                result = _scored(config, run_dir, name, phase_dir, PhaseResult(own_outputs, summary, own_texts),
                                 inputs, data_dir, texts)
                manifest.update(outputs=_output_digests(phase_dir, result.outputs), summary=result.summary,
                                scoreboard_hash=board_hash)
                atomic_write_json(phase_dir / MANIFEST, manifest)
                track_phase(config, run_dir, name, result.outputs)
                build_report(run_dir)
            else:
                print(f"[forge] {name}: already complete and verified in {phase_dir}; skipping", flush=True)
            if config.strict_criteria:
                check_criteria(name, manifest["summary"])
            continue
        _prepare_phase_dir(phase_dir, cfg_hash, input_digests, text_digests)
        print(f"[forge] {name}: starting: {PHASE_PURPOSE[name]}; input: "
              f"{', '.join(str(p) for p in inputs.values()) or 'none'}; writing to {phase_dir}", flush=True)
        started = time.time()
        manifest: dict[str, Any] = {"kind": PHASE_KIND, "phase": name, "config_hash": cfg_hash,
                                    "scoreboard_hash": board_hash, "input_phase": input_phase,
                                    "inputs": input_digests, "input_texts": text_digests, "started_unix": started}
        ctx = PhaseContext(config=config, run_dir=run_dir, phase_dir=phase_dir, inputs=inputs, texts=texts)
        try:
            result = load_phase(name)(ctx)
            manifest["phase_outputs"] = _output_digests(phase_dir, result.outputs)
            result = _scored(config, run_dir, name, phase_dir, result, inputs, ctx.data_dir, texts)
        except BaseException as err:
            stopped = isinstance(err, KeyboardInterrupt)
            manifest.update(status="stopped" if stopped else "failed", error=f"{type(err).__name__}: {err}",
                            traceback=traceback.format_exc(), wall_time_s=time.time() - started)
            atomic_write_json(phase_dir / MANIFEST, manifest)
            if stopped:
                raise Stopped(f"{_stop_reason()} during phase '{name}' (its checkpoints are kept in "
                              f"{phase_dir / 'work'})") from err
            raise
        manifest.update(status="complete", outputs=_output_digests(phase_dir, result.outputs),
                        texts=_text_digests(phase_dir, result.texts),
                        summary=result.summary, wall_time_s=round(time.time() - started, 2))
        atomic_write_json(phase_dir / MANIFEST, manifest)
        track_phase(config, run_dir, name, result.outputs)
        print(f"[forge] {name}: complete in {manifest['wall_time_s']:.0f} s; hands on: "
              + ", ".join(str(p) for p in result.outputs.values()), flush=True)
        if result.summary.get("criteria"):
            print(f"[forge] {name}: {criteria_line(result.summary['criteria'])}", flush=True)
        report, _ = build_report(run_dir)
        print(f"[forge] {name}: report updated: {report}", flush=True)
        if config.strict_criteria:
            check_criteria(name, result.summary)
    tally = criteria_tally(run_dir)
    if tally is not None:
        print(f"[forge] spec criteria over the run: {tally}; each with its value in {run_dir / 'report.md'}",
              flush=True)
    return run_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m forge.pipeline", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny", help="preset in forge/presets/ (default: tiny)")
    parser.add_argument("--config", help="a YAML config file instead of a preset")
    parser.add_argument("--phases", help="comma-separated phases to run (default: the preset's)")
    parser.add_argument("--out", help="parent folder of run directories (default: runs)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set cognate.train.seq_len=256 (repeatable)")
    parser.add_argument("--strict", action="store_true",
                        help="stop with exit code 3 at the first missed spec criterion (strict_criteria=true)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--verbose", action="store_true",
                        help="show everything on the screen (Ray, Tune, library output); by default only the "
                             "pipeline's own lines, the rest goes to runs/<name>/console.log")
    return parser


def free_disk_problem(config: PipelineConfig) -> str | None:
    """Why the run cannot start for lack of disk space where it writes (``min_free_disk_gb``), or None."""
    target = Path(config.out_dir).resolve()
    existing = next(path for path in (target, *target.parents) if path.exists())
    free_gib = shutil.disk_usage(existing).free / 2**30
    if free_gib >= config.min_free_disk_gb:
        return None
    return (f"only {free_gib:.1f} GiB free on the disk of {target}, and this preset needs {config.min_free_disk_gb:g} "
            f"GiB (min_free_disk_gb); free some space, write elsewhere with --out, or lower it with "
            f"--set min_free_disk_gb=N")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()] if args.phases else None
    try:
        strict = ["strict_criteria=true"] if args.strict else []
        config = load_pipeline_config(args.preset, config_file=args.config, overrides=[*args.overrides, *strict],
                                      phases=phases, out_dir=args.out)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        import yaml

        print(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
        return 0
    problem = free_disk_problem(config)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from cluster.runtime import connect

    previous_handler = signal.getsignal(signal.SIGTERM)
    try:
        if args.verbose:
            console = contextlib.nullcontext()
        else:
            from forge.console import readable_console

            log_path = Path(config.out_dir) / (config.run_name or config.preset) / "console.log"
            print(f"[forge] console: the pipeline's lines here; Ray, Tune and library output in {log_path} "
                  "(--verbose shows everything)", flush=True)
            console = readable_console(log_path)
        with console:
            connect(config.ray)  # first: ray.init installs its own SIGTERM handler (an abort), which ours replaces
            signal.signal(signal.SIGTERM, _raise_stopped)
            run_dir = run_pipeline(config)
    except (PipelineError, ActorLost, StorageFull) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        print(f"[forge] {str(err) or _stop_reason()}; finished phases are kept. Run the same command again to "
              "resume.", file=sys.stderr, flush=True)
        return 128 + (_stop_signals[-1] if _stop_signals else signal.SIGINT)
    except CriterionMissed as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    print(f"[forge] run written to {run_dir.resolve()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
