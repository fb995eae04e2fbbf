"""How many steps of tool-use transcripts teach a model the calculator's two copies (the question's expression into
the call, the result into the answer)?

    python benchmarks/scripts/tool_copy_steps.py --model RUN/curriculum/model --steps 0,100,200,400,700 --lr 1e-3 \
        --json tool_copy_steps.json

Trains ``--model`` (AdamW, batch 8, gradient clip 1, loss on the transcript only) on the train side of the ``hard``
tool source in Phase 6's context (the spec's initial tool prompt, the tool protocol, one worked example;
``benchmarks.tooluse.training_examples``), or with ``--short-context`` on ``Use the calculator.`` and the question
alone, and at each step count in ``--steps`` measures held-out tool-use accuracy (48 hard problems, Phase 6's turn
and token budget) and the scoreboard's ``taskworld_easy`` exact match (what the tool training costs the direct
answers).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path, help="a saved model directory")
    parser.add_argument("--steps", default="0,100,200,400", help="comma-separated step counts to measure at")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    parser.add_argument("--short-context", action="store_true",
                        help="train on 'Use the calculator.' and the question, not Phase 6's context")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--json", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    steps = sorted(int(step) for step in args.steps.split(",") if step)

    import torch

    from benchmarks.harness import evaluate
    from benchmarks.tooluse import INITIAL_TOOL_PROMPT, ToolUseConfig, evaluate_tool_use, load_problems, \
        training_examples
    from forge.artifacts import atomic_write_json, load_model_dir
    from forge.curriculum.levels import collate, encode_pairs
    from forge.modelinfo import max_positions, pad_token_id

    torch.set_num_threads(args.threads)
    model, tokenizer = load_model_dir(args.model)
    config = ToolUseConfig(num_fewshot=1, num_samples=0, seed=0, max_turns=2, max_new_tokens=24, batch_size=64)
    pairs = training_examples(["hard"], config, INITIAL_TOOL_PROMPT, None, limit=None)
    if args.short_context:
        pairs = [("Use the calculator.\n" + context[context.rindex("Question:"):], transcript)
                 for context, transcript in pairs]
    encoded = encode_pairs(tokenizer, pairs, max_positions(model))
    problems = load_problems(["hard"], heldout=True, limit=48, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    rng, order, rows, step, loss, started = random.Random(0), [], [], 0, float("nan"), time.perf_counter()
    model.requires_grad_(True)
    for target in steps:
        while step < target:
            if len(order) < 8:
                refill = list(range(len(encoded)))
                rng.shuffle(refill)
                order += refill
            batch, order = order[:8], order[8:]
            input_ids, mask, labels = collate([encoded[i] for i in batch], pad_token_id(tokenizer),
                                              torch.device("cpu"))
            model.train()
            optimizer.zero_grad()
            step_loss = model(input_ids=input_ids, attention_mask=mask, labels=labels, use_cache=False).loss
            step_loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step, loss = step + 1, float(step_loss)
        model.eval()
        tool = evaluate_tool_use(model, tokenizer, prompt=INITIAL_TOOL_PROMPT, problems=problems, config=config)
        easy = evaluate(model, tokenizer, ["taskworld_easy"], limit=100, seed=0, heldout_only=True,
                        max_new_tokens=16)["taskworld_easy"].metrics
        rows.append({"step": step, "loss": loss, "tool_accuracy": tool.metrics["accuracy"],
                     "tool_usage_rate": tool.metrics["tool_usage_rate"], "taskworld_easy": easy,
                     "elapsed_s": round(time.perf_counter() - started, 1)})
        print(json.dumps(rows[-1]), flush=True)
    atomic_write_json(args.json, {"command": "python benchmarks/scripts/tool_copy_steps.py " + " ".join(
        sys.argv[1:] if argv is None else argv), "model": str(args.model), "training_pairs": len(encoded),
        "heldout_problems": len(problems), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
