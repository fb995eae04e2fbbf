"""Phase 3's figures from finished run directories, side by side, as JSON.

    env -u FORGE_DATA_DIR python -m forge.pipeline --out /tmp/qs3-run1 --phases quietstar --set seed=1
    python benchmarks/scripts/quietstar_runs.py /tmp/qs3-run1/tiny /tmp/qs3-run2/tiny --cells --json OUT.json

Per run directory (each with finished ``evomerge`` and ``quietstar`` phases): the Quiet-STaR settings that were run
(``config.json``), the scoreboard's direct-answer figures (``taskworld_easy`` with thinking suppressed) of Phase 3's
input (the evomerge manifest) and output (the quietstar manifest), and Phase 3's own measurements: held-out accuracy
on its multi-digit problems before, after Step 1 and after Step 2, with thoughts and with them removed, thinking
usage, held-out perplexity, Step 1's format accuracy and the criteria. With ``--cells``, also the output model's
accuracy per task-world cell on Phase 3's held-out problems (greedy, with thoughts and with them forbidden, as the
phase measures it), how often it opened a thinking block, and its first ``--samples`` generations with the thoughts
shown; ``--cells-phase bitnet`` measures a later phase's model the same way (does compression keep the thinking?).
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
    easy = {side: {name: row[task] for name, row in scoreboard_rows(run_dir / phase).items()}
            for side, phase in (("input", "evomerge"), ("output", "quietstar"))}
    return {
        "run_dir": str(run_dir),
        "quietstar_config": read_json(run_dir / "config.json")["quietstar"],
        "data": summary["data"],
        "scoreboard_taskworld_easy": easy,
        "accuracy": {stage: {key.removeprefix("taskworld_"): value for key, value in figures.items()
                             if key.startswith("taskworld_")} for stage, figures in stages.items()},
        "heldout_perplexity": {stage: figures["heldout_perplexity"] for stage, figures in stages.items()},
        "format_accuracy": summary["step1"]["final_accuracy"],
        "format_history": [entry["val_accuracy"] for entry in summary["step1"]["history"]],
        "step2_episodes": summary["step2"]["episodes"],
        "criteria": {name: {"value": record["value"], "met": record["met"]}
                     for name, record in summary["criteria"].items()},
        "wall_time_s": summary["wall_time_s"],
    }


def cell_figures(run_dir: Path, samples: int, phase: str = "quietstar") -> dict:
    """Accuracy per cell of ``phase``'s output model (Phase 3's, or a later one's) on Phase 3's held-out problems,
    with thoughts and without, how often it opens a thinking block, and a few generations."""
    from forge.artifacts import load_model_dir, read_json
    from forge.quietstar.generate import answer_accuracy, generate
    from forge.quietstar.taskworld import TaskWorldReasoningConfig, TaskWorldReasoningGenerator

    config = read_json(run_dir / "config.json")
    eval_problems, max_new_tokens = config["quietstar"]["eval_problems"], config["quietstar"]["eval_max_new_tokens"]
    model, tokenizer = load_model_dir(run_dir / phase / "model")
    cells = config["quietstar"].get("taskworld_cells")  # absent in runs from before the setting: all cells
    world = TaskWorldReasoningGenerator(TaskWorldReasoningConfig(heldout=True, seed=config["seed"],
                                                                 **({"cells": tuple(cells)} if cells else {})))
    items = world.items(eval_problems)
    problems = [(item.question, item.answer) for item in items]
    with_thoughts, without = (answer_accuracy(model, tokenizer, problems, max_new_tokens=max_new_tokens,
                                              allow_thinking=allow)["items"] for allow in (True, False))
    per_cell: dict = {}
    for item, thought, direct in zip(items, with_thoughts, without):
        cell = per_cell.setdefault(item.cell, {"n": 0, "thoughts": 0, "no_thoughts": 0, "opened_thinking": 0})
        cell["n"] += 1
        cell["thoughts"] += int(thought["correct"])
        cell["opened_thinking"] += int(thought["used_thinking"])
        cell["no_thoughts"] += int(direct["correct"])
    outputs = generate(model, tokenizer, [f"Question: {q}\n" for q, _ in problems],
                       max_new_tokens=max_new_tokens, hide_thoughts=False)
    return {"per_cell": per_cell, "trace_steps": trace_steps(items, [output.full_text for output in outputs]),
            "samples": [{"question": q, "gold": a, "generation": output.full_text}
                        for (q, a), output in zip(problems[:samples], outputs)]}


def trace_steps(items, generations: list[str]) -> dict:
    """How the generated ``<step>`` lines compare with the items' worked traces, position by position: lines
    written where the trace has a step, lines whose left side (the digits read from the question and the carry)
    is the trace's, and lines equal to the trace's step (left side and result)."""
    figures = {"trace_steps": 0, "written": 0, "left_side_right": 0, "exact": 0}
    for item, generation in zip(items, generations):
        written = [line.removeprefix("<step> ").strip() for line in generation.splitlines()
                   if line.startswith("<step>")]
        figures["trace_steps"] += len(item.steps)
        for expected, line in zip(item.steps, written):
            figures["written"] += 1
            figures["left_side_right"] += int(line.split("=")[0] == expected.split("=")[0])
            figures["exact"] += int(line == expected)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", type=Path, nargs="+", help="run directories with finished evomerge and quietstar")
    parser.add_argument("--json", type=Path, required=True, help="where to write the JSON")
    parser.add_argument("--cells", action="store_true", help="also measure the output model per cell (slower)")
    parser.add_argument("--samples", type=int, default=6, help="generations shown with --cells")
    parser.add_argument("--cells-phase", default="quietstar",
                        help="the phase whose output model --cells measures (e.g. bitnet: is the thinking kept?)")
    args = parser.parse_args()

    from forge.artifacts import atomic_write_json

    phases = {"quietstar", args.cells_phase} if args.cells else {"quietstar"}
    missing = [f"{d} ({phase})" for d in args.run_dirs for phase in sorted(phases)
               if not (d / phase / "manifest.json").is_file()]
    if missing:
        print(f"error: no finished phase in {', '.join(missing)}: run python -m forge.pipeline --phases "
              "quietstar,... --out PARENT first", file=sys.stderr)
        return 2
    runs = []
    for run_dir in args.run_dirs:
        run = run_figures(run_dir)
        if args.cells:
            run.update(cell_figures(run_dir, args.samples, args.cells_phase), cells_phase=args.cells_phase)
        print(json.dumps({key: run[key] for key in ("run_dir", "scoreboard_taskworld_easy", "accuracy",
                                                    "format_accuracy", "per_cell") if key in run}), flush=True)
        runs.append(run)
    atomic_write_json(args.json, {"runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
