"""Phase 3's figures from finished run directories, side by side, as JSON.

    env -u FORGE_DATA_DIR python -m forge.pipeline --out /tmp/qs3-run1 --phases quietstar --set quietstar.direct_examples=120
    python benchmarks/scripts/quietstar_runs.py /tmp/qs3-run1/tiny /tmp/qs3-run2/tiny --json OUT.json

Per run directory (each with finished ``evomerge`` and ``quietstar`` phases): the Quiet-STaR settings that were run
(``config.json``), the scoreboard's direct-answer figures (``taskworld_easy`` with thinking suppressed) of Phase 3's
input (the evomerge manifest) and output (the quietstar manifest), and Phase 3's own measurements: held-out accuracy
on its multi-digit problems before, after Step 1 and after Step 2, with thoughts and with them removed, thinking
usage, held-out perplexity, Step 1's format accuracy and the criteria.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))


def scoreboard_rows(phase_dir: Path) -> dict:
    """The scoreboard rows of the models a finished phase handed on."""
    from forge.artifacts import read_json

    return read_json(phase_dir / "manifest.json")["summary"]["scoreboard"]["rows"]


def run_figures(run_dir: Path) -> dict:
    from forge.artifacts import read_json

    summary = read_json(run_dir / "quietstar" / "manifest.json")["summary"]
    stages = summary["stages"]
    task = "task_accuracy/taskworld_easy"
    return {
        "run_dir": str(run_dir),
        "quietstar_config": read_json(run_dir / "config.json")["quietstar"],
        "data": summary["data"],
        "scoreboard_taskworld_easy": {"input": {name: row[task] for name, row in scoreboard_rows(run_dir / "evomerge").items()},
                                      "output": {name: row[task] for name, row in scoreboard_rows(run_dir / "quietstar").items()}},
        "accuracy": {stage: {key.removeprefix("taskworld_"): value for key, value in figures.items()
                             if key.startswith("taskworld_")} for stage, figures in stages.items()},
        "heldout_perplexity": {stage: figures["heldout_perplexity"] for stage, figures in stages.items()},
        "format_accuracy": summary["step1"]["final_accuracy"],
        "format_history": [entry["val_accuracy"] for entry in summary["step1"]["history"]],
        "step2_episodes": summary["step2"]["episodes"],
        "criteria": {name: {"value": record["value"], "met": record["met"]} for name, record in summary["criteria"].items()},
        "wall_time_s": summary["wall_time_s"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", type=Path, nargs="+", help="run directories with finished evomerge and quietstar")
    parser.add_argument("--json", type=Path, required=True, help="where to write the JSON")
    args = parser.parse_args()

    from forge.artifacts import atomic_write_json

    missing = [str(d) for d in args.run_dirs if not (d / "quietstar" / "manifest.json").is_file()]
    if missing:
        print(f"error: no finished quietstar phase in {', '.join(missing)}: run python -m forge.pipeline --phases "
              "quietstar --out PARENT first", file=sys.stderr)
        return 2
    runs = [run_figures(run_dir) for run_dir in args.run_dirs]
    for run in runs:
        print(json.dumps({key: run[key] for key in ("run_dir", "scoreboard_taskworld_easy", "accuracy",
                                                    "format_accuracy")}), flush=True)
    atomic_write_json(args.json, {"runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
