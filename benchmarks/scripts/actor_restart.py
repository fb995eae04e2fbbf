"""What a restart of a killed Cognate trainer costs: SIGKILL of its actor process in the middle of Phase 1
(the shrunken config of tests/test_pipeline.py), then the time until Ray has a new process up, until
training goes on from the checkpoint, the steps lost, and the phase's wall time against an uninterrupted
run. JSON out.

Usage:
    python benchmarks/scripts/actor_restart.py --out /tmp/actor-restart --json actor_restart.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from actors.restarts import ATTEMPTS_FILE, read_attempts  # noqa: E402
from forge.artifacts import read_json  # noqa: E402
from forge.config import load_pipeline_config  # noqa: E402
from forge.pipeline import run_pipeline  # noqa: E402
from forge.tracking import read_metrics  # noqa: E402
from test_faults import COGNATE_ONLY, KillAtStep  # noqa: E402  (the watcher the fault tests use)
from test_pipeline import SMALL  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="parent folder for the two runs (emptied first)")
    parser.add_argument("--json", required=True, help="where to write the figures")
    parser.add_argument("--kill-at-step", type=int, default=6, help="model a's step at which its process is killed")
    parser.add_argument("--data-dir", default=os.environ.get("FORGE_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    args = parser.parse_args()
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    overrides = [*SMALL, f"data.data_dir={args.data_dir}", *COGNATE_ONLY]
    runs = {}
    for name in ("uninterrupted", "killed"):
        phase_dir = out / name / "tiny" / "cognate"
        attempts_file = phase_dir / "work" / "a" / ATTEMPTS_FILE
        killer = None
        if name == "killed":
            killer = KillAtStep(phase_dir, "cognate-a", attempts_file, step=args.kill_at_step)
            killer.start()
        run_pipeline(load_pipeline_config("tiny", overrides=overrides, out_dir=str(out / name)))
        manifest = read_json(phase_dir / "manifest.json")
        runs[name] = {"status": manifest["status"], "phase_wall_s": manifest["wall_time_s"],
                      "steps_a": manifest["summary"]["models"]["a"]["steps"]}
        if killer is None:
            continue
        killer.join()
        killed_at = killer.killed["time"]
        attempts = read_attempts(attempts_file)
        records = [m for m in read_metrics(phase_dir / "metrics.jsonl") if m["source"] == "cognate-a"]
        resumed = next(m for m in records if "train/resumed_at_step" in m)
        first_step = min((m for m in records if "train/loss" in m and m["time"] > resumed["time"]),
                         key=lambda m: m["time"])
        runs[name].update({
            "killed_at_step": killer.killed["step"], "resumed_at_step": resumed["train/resumed_at_step"],
            "steps_lost": killer.killed["step"] - resumed["train/resumed_at_step"],
            "processes": len(attempts),
            "new_process_up_s": round(attempts[-1]["started_unix"] - killed_at, 2),
            "checkpoint_loaded_s": round(resumed["time"] - killed_at, 2),
            "first_step_after_kill_s": round(first_step["time"] - killed_at, 2),
        })
    ray.shutdown()
    result = {"command": " ".join(sys.argv), "runs": runs,
              "restart_cost_s": round(runs["killed"]["phase_wall_s"] - runs["uninterrupted"]["phase_wall_s"], 1),
              "cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()}
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
