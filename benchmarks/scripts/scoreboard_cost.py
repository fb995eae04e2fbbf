"""The scoreboard's share of a run's time, and its per-model cost, from a finished run's files.

    python benchmarks/scripts/scoreboard_cost.py runs/tiny --out benchmarks/results/scoreboard_cost.json
    python benchmarks/scripts/scoreboard_cost.py runs/tiny --score runs/tiny/cognate/model_reasoning ...

Reads every phase manifest (wall time, and the scoreboard's own wall time inside it) and scoreboard.json
(per model: wall and CPU seconds of the measurement, per figure); a cached row cost nothing in this run.
``--score``: also score these model directories in this process (one torch thread, the default scoreboard
settings, the run's held-out texts, no data folder) and record wall and CPU seconds per figure.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))


def score_in_process(run_dir: Path, model_dir: Path) -> dict:
    import torch

    from benchmarks.scoreboard import score_model
    from forge.artifacts import load_model_dir
    from forge.config import ScoreboardConfig
    from forge.data.heldout import HELDOUT
    from forge.pipeline import read_run_texts

    torch.set_num_threads(1)
    config = ScoreboardConfig()
    model, tokenizer = load_model_dir(model_dir)
    texts = read_run_texts(run_dir, HELDOUT, config.heldout_chars)
    return score_model(model, tokenizer, model_dir, config.settings(), heldout_texts=texts, wikitext_texts=[],
                       data_dir=None)


def main(argv: list[str] | None = None) -> int:
    from forge.artifacts import atomic_write_json, read_json
    from forge.phases import PHASES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "scoreboard_cost.json")
    parser.add_argument("--score", nargs="*", type=Path, default=[], help="model directories to score in-process")
    args = parser.parse_args(argv)
    board = read_json(args.run_dir / "scoreboard.json")
    scored = {str(path): score_in_process(args.run_dir, path) for path in args.score}
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
              "settings": board.get("settings"), "scored_in_process": scored}
    atomic_write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("run_wall_s", "scoreboard_wall_s", "scoreboard_share")}))
    for path, row in scored.items():
        print(json.dumps({"model": path, "score_s": row["score_s"], "score_cpu_s": row["score_cpu_s"],
                          "timings_s": row["timings_s"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
