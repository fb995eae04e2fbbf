"""Whether the calculator pays: held-out tool-use accuracy of saved models with the tool and answering directly.

    python benchmarks/scripts/tooluse_pays.py --model bitnet=RUN/bitnet/model --model curriculum=RUN/curriculum/model \
        --sources hard --limit 96 --out tooluse_pays.json

Per model: ``benchmarks.tooluse.evaluate_tool_use`` (the spec's initial tool prompt, Phase 6's turn and token
budget and worked examples) and ``evaluate_direct`` (the same items and examples, answered at once) on the same
held-out problems, each accuracy with a bootstrap interval and the paired difference tool - direct with its
interval (``accuracy_intervals``); where the tool runs fail, the two copies it needs (``copies``: the first
call's argument is the question's expression; an answer repeats its call's result); the first transcripts.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, metavar="NAME=DIR",
                        help="a saved model directory (repeatable)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--sources", default="hard", help="comma-separated tool-use sources (arithmetic ones)")
    parser.add_argument("--limit", type=int, default=96, help="held-out problems per source")
    parser.add_argument("--max-turns", type=int, default=2, help="model turns per problem (tool_persona's)")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="tokens per model turn (tool_persona's)")
    parser.add_argument("--num-fewshot", type=int, default=1, help="worked examples per problem (tool_persona's)")
    parser.add_argument("--seed", type=int, default=0, help="problem draw, examples and bootstrap")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args(argv)
    models = dict(spec.split("=", 1) for spec in args.model if "=" in spec)
    if len(models) != len(args.model):
        parser.error("--model takes NAME=DIR")

    import torch

    from benchmarks.tooluse import (INITIAL_TOOL_PROMPT, ToolUseConfig, accuracy_intervals, evaluate_direct,
                                    evaluate_tool_use, load_problems)
    from forge.artifacts import atomic_write_json, load_model_dir

    torch.set_num_threads(args.threads)
    sources = [source for source in args.sources.split(",") if source]
    problems = load_problems(sources, heldout=True, limit=args.limit, seed=args.seed)
    config = ToolUseConfig(max_turns=args.max_turns, max_new_tokens=args.max_new_tokens,
                           num_fewshot=args.num_fewshot, num_samples=0, seed=args.seed, batch_size=64)
    report = {"command": "python benchmarks/scripts/tooluse_pays.py " + " ".join(sys.argv[1:] if argv is None
                                                                                else argv),
              "sources": sources, "n_items": len(problems), "prompt": INITIAL_TOOL_PROMPT,
              "config": {"max_turns": args.max_turns, "max_new_tokens": args.max_new_tokens,
                         "num_fewshot": args.num_fewshot, "seed": args.seed}, "models": {}}
    references = {problem.id: problem.reference for problem in problems}

    def copies(records) -> dict[str, float]:
        called = [r for r in records if r["calls"]]
        answered = [r for r in called if r["answer"] is not None and r["calls"][-1]["well_formed"]]
        return {"calls_copying_the_expression": sum(r["calls"][0]["argument"] == references[r["id"]]
                                                    for r in called) / len(records),
                "answers_copying_the_result": sum(r["answer"] == r["calls"][-1]["result"]
                                                  for r in answered) / len(records)}

    for name, directory in models.items():
        model, tokenizer = load_model_dir(Path(directory))
        began = time.perf_counter()
        tool = evaluate_tool_use(model, tokenizer, prompt=INITIAL_TOOL_PROMPT, problems=problems, config=config)
        direct = evaluate_direct(model, tokenizer, prompt=INITIAL_TOOL_PROMPT, problems=problems, config=config)
        # Row 0 is the baseline: the tool's row carries the paired difference tool - direct.
        direct_row, tool_row = accuracy_intervals([[r["correct"] for r in result.records] for result in (direct, tool)],
                                                  seed=args.seed)
        report["models"][name] = {
            "dir": directory, "seconds": time.perf_counter() - began,
            "tool": {**{k: tool.metrics[k] for k in ("accuracy", "tool_usage_rate", "avg_turns", "answer_rate")},
                     "interval": tool_row["interval"], **copies(tool.records)},
            "direct": {"accuracy": direct.metrics["accuracy"], "interval": direct_row["interval"]},
            "tool_minus_direct": {"value": tool_row["difference"], "interval": tool_row["difference_interval"]},
            "tool_transcripts": [{k: r[k] for k in ("id", "correct", "transcript")} for r in tool.records[:5]],
            "direct_answers": [{k: r[k] for k in ("id", "correct", "answer")} for r in direct.records[:5]],
        }
        print(name, json.dumps({k: v for k, v in report["models"][name].items()
                                if k in ("tool", "direct", "tool_minus_direct", "seconds")}), flush=True)
    atomic_write_json(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
