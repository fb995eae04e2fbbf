"""Wall time and peak memory of `python -m forge.pipeline` (default: the tiny preset), plus the measured
validation perplexity of each Cognate model against the unigram baseline, EvoMerge's measured outcome,
Quiet-STaR's stages and criteria, BitNet's criteria, the curriculum levels and Phase 6's A/B trajectory, as JSON.

Usage:
    python benchmarks/scripts/default_run.py --out /tmp/bench-run --json default_run.json [-- PIPELINE ARGS]

Peak memory over the pipeline's whole process tree (driver, Ray's GCS and raylet, the trainer workers),
sampled every 0.5 s: the sum of PSS (proportional set size: shared pages such as libtorch and Ray's
object store split between the processes mapping them; the honest total) and, for reference, the sum of
RSS (counts every shared page once per process, so it overstates). The wall time includes Ray's start-up.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil


def tree_memory(proc: psutil.Process) -> tuple[int, int]:
    """(sum of PSS, sum of RSS) over ``proc`` and its descendants."""
    pss = rss = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            info = p.memory_full_info()
        except psutil.Error:
            continue
        pss += info.pss
        rss += info.rss
    return pss, rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="parent folder for the run (emptied first)")
    parser.add_argument("--json", required=True, help="where to write the figures")
    parser.add_argument("pipeline_args", nargs="*", help="extra arguments for forge.pipeline (after --)")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "forge.pipeline", "--out", str(out), *args.pipeline_args]
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # a private Ray, so the whole tree is ours to measure
    started = time.time()
    proc = subprocess.Popen(cmd, env=env)
    handle = psutil.Process(proc.pid)
    peak_pss = peak_rss = 0
    while proc.poll() is None:
        pss, rss = tree_memory(handle)
        peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
        time.sleep(0.5)
    wall = time.time() - started
    result = {"command": " ".join(cmd), "returncode": proc.returncode, "wall_time_s": round(wall, 1),
              "peak_pss_gib": round(peak_pss / 1024**3, 3), "peak_rss_sum_gib": round(peak_rss / 1024**3, 3),
              "cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()}
    manifests = sorted(out.glob("*/*/manifest.json"))
    for manifest_path in manifests:
        manifest = json.loads(manifest_path.read_text())
        phase = {"status": manifest["status"], "wall_time_s": manifest.get("wall_time_s")}
        if manifest["phase"] == "cognate" and manifest["status"] == "complete":
            phase["models"] = {
                name: {key: figures[key] for key in ("val/perplexity", "unigram_val_perplexity",
                                                     "perplexity_vs_unigram", "steps", "tokens")}
                for name, figures in manifest["summary"]["models"].items()}
            phase["diversity"] = {k: v for k, v in manifest["summary"]["diversity"].items() if k != "per_model"}
            phase.update({k: manifest["summary"][k] for k in ("criteria", "criteria_missed")})
        if manifest["phase"] == "evomerge" and manifest["status"] == "complete":
            summary = manifest["summary"]
            phase["champion"] = {k: summary["champion"][k] for k in ("label", "fitness", "terms")}
            phase["parents_fitness"] = {name: p["fitness"] for name, p in summary["parents"].items()}
            phase.update({k: summary[k] for k in ("generations", "stop_reason", "improvement_over_generation0",
                                                  "criteria", "criteria_missed", "fitness_terms", "injections")})
            phase["generation0_best"] = summary["generation0_best"]["fitness"]
            phase["best_per_generation"] = [h["best"] for h in summary["history"]]
        if manifest["phase"] == "bitnet" and manifest["status"] == "complete":
            summary = manifest["summary"]
            phase.update({k: summary[k] for k in ("input", "text_source", "compression_ratio", "accuracy_before",
                                                  "accuracy_packed", "accuracy_drop", "sparsity",
                                                  "inference_speedup", "criteria", "criteria_missed")})
            phase["heldout_perplexity"] = [summary["heldout_before"]["perplexity"],
                                           summary["heldout_after"]["perplexity"]]
        if manifest["phase"] == "quietstar" and manifest["status"] == "complete":
            summary = manifest["summary"]
            phase.update({k: summary[k] for k in ("stages", "criteria", "criteria_missed", "generation_speed")})
            phase["data"] = {k: summary["data"].get(k) for k in ("source", "examples")}
            phase["step1"] = {k: summary["step1"][k] for k in ("initial_accuracy", "final_accuracy", "converged",
                                                               "epochs_run", "wall_time_s")}
            phase["step2"] = {k: summary["step2"][k] for k in ("optimizer_steps", "checks", "rollbacks",
                                                               "stopped_reason", "wall_time_s")}
        if manifest["phase"] == "curriculum" and manifest["status"] == "complete":
            summary = manifest["summary"]
            phase.update({k: summary[k] for k in ("input_bitnet_quantized", "curriculum_level_reached", "accuracy",
                                                  "measured_strengths")})
        if manifest["phase"] == "tool_persona" and manifest["status"] == "complete":
            summary = manifest["summary"]
            phase.update({k: summary[k] for k in ("stop_reason", "iterations", "final_prompts", "validation_before",
                                                  "validation_after", "persona_fitness_tasks", "eval_actors")})
            trajectory = json.loads((manifest_path.parent / "trajectory.json").read_text())
            phase["trajectory"] = [{k: h[k] for k in ("cycle", "iteration", "incumbent", "proposals", "winner_score", "improvement",
                                                     "plateaued", "half_baked", "baking_strength_measured",
                                                     "iteration_s")}
                                   for h in trajectory["history"]]
        result[manifest["phase"]] = phase
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
