"""The scoreboard's share of a run's time, and its per-model cost, from a finished run's files.

    python benchmarks/scripts/scoreboard_cost.py runs/tiny --out benchmarks/results/scoreboard_cost.json

Reads every phase manifest (wall time, and the scoreboard's own wall time inside it) and scoreboard.json
(per model: wall and CPU seconds of the measurement, per figure); a cached row cost nothing in this run.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))


def main(argv: list[str] | None = None) -> int:
    from forge.artifacts import atomic_write_json, read_json
    from forge.phases import PHASES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "scoreboard_cost.json")
    args = parser.parse_args(argv)
    board = read_json(args.run_dir / "scoreboard.json")
    phases, total, scoring = {}, 0.0, 0.0
    for phase in PHASES:
        path = args.run_dir / phase / "manifest.json"
        if not path.is_file():
            continue
        manifest = read_json(path)
        wall = manifest["wall_time_s"]
        board_wall = manifest["summary"].get("scoreboard", {}).get("wall_s", 0.0)
        phases[phase] = {"wall_s": wall, "scoreboard_wall_s": board_wall}
        total += wall
        scoring += board_wall
    models = {f"{phase}/{name}": {key: row[key] for key in ("score_s", "score_cpu_s", "timings_s", "cached")}
              for phase, entry in board["phases"].items() for name, row in entry["models"].items()}
    result = {"run_dir": str(args.run_dir), "phases": phases, "run_wall_s": total, "scoreboard_wall_s": scoring,
              "scoreboard_share": scoring / total if total else None, "models": models,
              "settings": board.get("settings")}
    atomic_write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("run_wall_s", "scoreboard_wall_s", "scoreboard_share")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
