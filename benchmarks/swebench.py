"""SWE-bench adapter: model patches in the official predictions format, scored by the official harness.

``generate_predictions`` asks a model for a unified diff per instance; ``write_predictions`` writes
the JSONL the ``swebench`` harness reads (``instance_id``, ``model_name_or_path``, ``model_patch``);
``run_harness`` runs ``python -m swebench.harness.run_evaluation`` and reads its report. Scoring needs
Docker and the ``swebench`` package; without them ``run_harness`` raises ``SWEBenchUnavailable``
saying what is missing. There is no other way to get a score: nothing here estimates one.
"""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from forge.artifacts import atomic_write_bytes, read_json

from benchmarks.lm import generate_until

PROMPT = ("You are fixing a bug in the repository {repo}.\n\nIssue:\n{problem_statement}\n\n"
          "Answer with a unified diff (git format) that fixes the issue.\n\n```diff\n")
_DIFF_START = re.compile(r"^(diff --git |--- a/)", re.MULTILINE)


class SWEBenchUnavailable(RuntimeError):
    """The official SWE-bench harness cannot run here (no Docker daemon or no swebench package)."""


def extract_patch(generation: str) -> str:
    """The unified diff in a generation: from the first ``diff --git``/``--- a/`` line up to a closing
    code fence (or the end); empty when there is none."""
    match = _DIFF_START.search(generation)
    if match is None:
        return ""
    return generation[match.start():].split("```")[0].rstrip() + "\n"


def generate_predictions(model, tokenizer, instances: Sequence[Mapping[str, Any]], *, max_new_tokens: int = 512,
                         batch_size: int = 4, system_prompt: str = "") -> list[dict[str, str]]:
    """Greedy patches for SWE-bench instances (records with ``instance_id``, ``repo``, ``problem_statement``);
    ``system_prompt`` (e.g. Phase 6's tool prompt) goes before each task, on its own line."""
    prefix = f"{system_prompt}\n\n" if system_prompt else ""
    prompts = [prefix + PROMPT.format(repo=item["repo"], problem_statement=item["problem_statement"])
               for item in instances]
    generations = generate_until(model, tokenizer, prompts, until=("\n```",), max_new_tokens=max_new_tokens,
                                 batch_size=batch_size)
    # The prompt opened a ```diff fence, so the generation is the diff body.
    return [{"instance_id": item["instance_id"], "model_patch": extract_patch(text)}
            for item, text in zip(instances, generations)]


def write_predictions(predictions: Iterable[Mapping[str, str]], model_name: str, path: Path) -> Path:
    """Write predictions as the harness's JSONL, atomically; every record needs ``instance_id`` and
    ``model_patch`` (a string, empty for no patch)."""
    lines = []
    seen = set()
    for record in predictions:
        instance_id, patch = record.get("instance_id"), record.get("model_patch")
        if not isinstance(instance_id, str) or not isinstance(patch, str):
            raise ValueError(f"a prediction needs string instance_id and model_patch, got {dict(record)!r:.200}")
        if instance_id in seen:
            raise ValueError(f"instance {instance_id} is predicted twice; the harness takes one patch per instance")
        seen.add(instance_id)
        lines.append(json.dumps({"instance_id": instance_id, "model_name_or_path": model_name,
                                 "model_patch": patch}))
    path = Path(path)
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


def harness_problems() -> list[str]:
    """Why the official harness cannot run here (empty: it can)."""
    problems = []
    if importlib.util.find_spec("swebench") is None:
        problems.append("the 'swebench' package is not installed (pip install swebench)")
    docker = shutil.which("docker")
    if docker is None:
        problems.append("Docker is not installed (the harness builds one container per instance)")
    else:
        probe = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=60)
        if probe.returncode != 0:
            problems.append(f"the Docker daemon is not reachable ('docker info' failed: "
                            f"{(probe.stderr or probe.stdout).strip().splitlines()[-1:]})")
    return problems


def run_harness(predictions_path: Path, *, run_id: str, dataset_name: str = "princeton-nlp/SWE-bench_Lite",
                max_workers: int = 4, timeout_s: int = 1800, report_dir: Path | None = None) -> dict[str, Any]:
    """Score predictions with ``swebench.harness.run_evaluation``; returns its report plus
    ``resolved_rate`` (resolved / submitted). Raises SWEBenchUnavailable when it cannot run here."""
    problems = harness_problems()
    if problems:
        raise SWEBenchUnavailable("SWE-bench scoring needs the official harness, which cannot run here: "
                                  + "; ".join(problems) + ". No score is reported without it.")
    predictions_path = Path(predictions_path).resolve()
    records = [json.loads(line) for line in predictions_path.read_text().splitlines() if line.strip()]
    if not records:
        raise ValueError(f"{predictions_path} holds no predictions")
    report_dir = Path(report_dir or predictions_path.parent)
    subprocess.run([sys.executable, "-m", "swebench.harness.run_evaluation", "--dataset_name", dataset_name,
                    "--predictions_path", str(predictions_path), "--max_workers", str(max_workers),
                    "--run_id", run_id, "--timeout", str(timeout_s)], cwd=report_dir, check=True)
    model_name = records[0]["model_name_or_path"].replace("/", "__")
    report_path = report_dir / f"{model_name}.{run_id}.json"
    if not report_path.is_file():
        raise FileNotFoundError(f"the harness finished but wrote no report at {report_path}")
    report = read_json(report_path)
    report["resolved_rate"] = report.get("resolved_instances", 0) / len(records)
    return report
