"""Quiet-STaR Step 1 with and without replay of pretraining text: held-out perplexity and format accuracy, as JSON.

    python benchmarks/scripts/quietstar_step1_replay.py --run-dir runs/tiny --settings 0.01:0,0.003:8 --out step1.json

Takes the model a finished evomerge phase handed on (``<run>/evomerge``), adds the thinking tokens and runs the
tiny preset's Step 1 (``quietstar.format_bake``: 400 generated examples, its epochs and seq_len) once per setting
``learning_rate:replay_sequences``, replaying Phase 1's declared replay texts. Perplexity: 128-token windows on
6,000 characters of Phase 1's held-out text (the scoreboard's sample).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="a run directory with finished cognate and evomerge")
    parser.add_argument("--settings", default="0.01:0,0.001:0,0.01:8,0.003:8",
                        help="comma-separated learning_rate:replay_sequences pairs")
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON")
    args = parser.parse_args()

    import torch

    from benchmarks.lm import perplexity
    from forge.artifacts import atomic_write_json, load_model_dir
    from forge.config import PipelineConfig
    from forge.optim import MuonGrokfastConfig
    from forge.data.heldout import HELDOUT, REPLAY
    from forge.pipeline import read_run_texts
    from forge.pipeline import finished_outputs
    from forge.quietstar.format_training import bake_reasoning_format, select_examples
    from forge.quietstar.synthetic import SyntheticConfig, SyntheticReasoningGenerator
    from forge.quietstar.tokens import add_thinking_tokens

    torch.set_num_threads(2)
    outputs = finished_outputs(args.run_dir / "evomerge")
    if not outputs:
        print(f"error: {args.run_dir / 'evomerge'} holds no finished evomerge phase", file=sys.stderr)
        return 2
    source = next(iter(outputs.values()))
    preset = PipelineConfig().quietstar
    heldout = read_run_texts(args.run_dir, HELDOUT, 6000)
    replay_texts = read_run_texts(args.run_dir, REPLAY, 10**12)
    examples = list(SyntheticReasoningGenerator(SyntheticConfig(seed=0)).generate(preset.num_examples))
    results = []
    for setting in args.settings.split(","):
        lr, sequences = float(setting.split(":")[0]), int(setting.split(":")[1])
        model, tokenizer = load_model_dir(source)
        before = perplexity(model, tokenizer, heldout, max_length=128)
        add_thinking_tokens(model, tokenizer)
        config = dataclasses.replace(preset.format_bake, replay_sequences=sequences, optimizer=MuonGrokfastConfig(
            **{**dataclasses.asdict(preset.format_bake.optimizer), "muon_lr": lr, "adam_lr": lr}))
        train, val = select_examples(examples, config)
        started = time.perf_counter()
        report = bake_reasoning_format(model, tokenizer, train, val, config,
                                       replay_texts=replay_texts if sequences else None)
        after = perplexity(model, tokenizer, heldout, max_length=128)
        result = {"learning_rate": lr, "replay_sequences": sequences, "heldout_perplexity_before": before,
                  "heldout_perplexity_after_step1": after, "perplexity_ratio": after / before,
                  "format_accuracy": report.final_accuracy, "converged": report.converged,
                  "epochs_run": report.epochs_run, "wall_s": time.perf_counter() - started}
        print(json.dumps(result), flush=True)
        results.append(result)
    atomic_write_json(args.out, {"model": str(source), "examples": len(examples), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
