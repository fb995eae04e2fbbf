"""What a model writes to the scoreboard's direct questions (offline: ``taskworld_easy``, its 90 held-out add/cmp
problems, asked as the scoreboard asks them): per model, how many answers are right, how many wrong, and how many
are a calculator call where no tool is offered. JSON out.

    python benchmarks/scripts/easy_answers.py /tmp/run9/tiny/bitnet/model /tmp/run9/tiny/curriculum/model \\
        --json benchmarks/results/easy_answers.json
"""
from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import forge  # noqa: E402,F401  (registers the Cognate architecture)
from benchmarks.harness import evaluate, item_scores  # noqa: E402
from forge.artifacts import atomic_write_json, load_model_dir  # noqa: E402
from forge.config import load_pipeline_config  # noqa: E402
from forge.quietstar.tokens import suppressed_thinking_ids  # noqa: E402

TASK = "taskworld_easy"
CALL = "<calc>"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", help="model directories")
    parser.add_argument("--json", required=True, help="where to write the counts")
    args = parser.parse_args(argv)
    board = load_pipeline_config("tiny").scoreboard
    rows = []
    for path in args.models:
        model, tokenizer = load_model_dir(path, device="cpu")
        result = evaluate(model, tokenizer, [TASK], limit=board.offline_task_items, seed=board.seed,
                          heldout_only=True, max_new_tokens=board.max_new_tokens, log_samples=True,
                          suppress_token_ids=suppressed_thinking_ids(tokenizer))[TASK]
        counts = collections.Counter()
        examples = {}
        for sample, score in zip(result.samples, item_scores(TASK, result)):
            kind = "right" if score else ("calculator_call" if CALL in sample["generation"] else "wrong")
            counts[kind] += 1
            examples.setdefault(kind, sample["generation"])
        rows.append({"model": path, "items": len(result.samples), "accuracy": counts["right"] / len(result.samples),
                     "right": counts["right"], "wrong": counts["wrong"], "calculator_call": counts["calculator_call"],
                     "example_generation": examples})
        print(f"{path}: {dict(counts)} of {len(result.samples)}", flush=True)
    atomic_write_json(Path(args.json), {"task": TASK, "settings": {"seed": board.seed, "max_new_tokens":
                                                                   board.max_new_tokens}, "models": rows})
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
