"""Phase 5's value bakes compared on one trained level: the six value prompts baked one after another
(``forge.baking.bake_sequence``), baked together (``bake_together``), and baked together with the level's
answers retained (what the phase does). Per variant: the level's held-out accuracy after the bake and each
prompt's strength against the trained model. JSON out.

    python benchmarks/scripts/value_bakes.py --model /tmp/final-run/tiny/bitnet/model \\
        --run-dir /tmp/final-run/tiny --json benchmarks/results/value_bakes.json [--inputs 24 --inputs 48]

The level is the preset's first curriculum level, trained once as the phase trains it (its steps and Phase 1
replay from ``--run-dir``, without Phase 6's tool-use demonstrations); every variant starts from a copy of
that trained model. ``--inputs`` (repeatable) runs the joint variants with that many bake inputs; the
sequential variant uses the first of them.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from forge.artifacts import atomic_write_json, load_model_dir  # noqa: E402
from forge.baking import bake_sequence, bake_together  # noqa: E402
from forge.config import load_pipeline_config  # noqa: E402
from forge.curriculum.levels import (bake_inputs, build_levels, load_value_prompts, retained_answers,  # noqa: E402
                                     train_stage, values_path)
from forge.data.heldout import REPLAY, TEXT_FILES, read_texts  # noqa: E402
from forge.data.replay import Replay  # noqa: E402
from forge.modelinfo import max_positions  # noqa: E402
from forge.phases.curriculum import accuracy_figures  # noqa: E402
from forge.quant.convert import dequantize_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="Phase 5's input model directory (Phase 4's bitnet/model)")
    parser.add_argument("--run-dir", required=True, help="the run whose Phase 1 replay texts the level replays")
    parser.add_argument("--json", required=True, help="where to write the figures")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    parser.add_argument("--inputs", action="append", type=int, help="bake inputs of the joint variants (repeatable; "
                                                                    "default: the preset's curriculum.bake_inputs)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_pipeline_config(args.preset, overrides=args.set).curriculum
    level = build_levels(cfg, None)[0]
    prompts = load_value_prompts(values_path(cfg))
    texts = [prompt.text for prompt in prompts]
    model, tokenizer = load_model_dir(args.model, device="cpu")
    dequantize_model(model)
    replay = Replay(tokenizer, read_texts(Path(args.run_dir) / "cognate" / TEXT_FILES[REPLAY], 10**12),
                    cfg.replay_seq_len, cfg.replay_sequences, seed=cfg.seed)
    started = time.perf_counter()
    train_stage(model, tokenizer, level.train, cfg, replay=replay)
    model.eval()
    trained, interval, _ = accuracy_figures(model, tokenizer, level, cfg)
    print(f"level 1 trained: accuracy {trained:.3f} {interval} ({time.perf_counter() - started:.0f} s)", flush=True)
    config = cfg.baking.at_strength("full")
    retain = retained_answers(tokenizer, level, cfg, max_positions(model))
    counts = args.inputs or [cfg.bake_inputs]
    variants = [("sequential", counts[0], ())] + [(kind, n, keep) for n in counts
                                                  for kind, keep in (("joint", ()), ("joint_retained", retain))]
    rows = []
    for kind, count, keep in variants:
        variant_started = time.perf_counter()
        inputs = bake_inputs(level, count)
        if kind == "sequential":
            baked, steps = bake_sequence(copy.deepcopy(model), tokenizer, texts, inputs, config)
            strengths = steps[-1]["strength_vs_original"]
        else:
            baked, record = bake_together(copy.deepcopy(model), tokenizer, texts, inputs, config, retain=keep)
            strengths = record["strengths"]
        baked.eval()
        accuracy, accuracy_interval, _ = accuracy_figures(baked, tokenizer, level, cfg)
        rows.append({"variant": kind, "bake_inputs": count, "retained_sequences": len(keep),
                     "accuracy_after_baking": accuracy, "accuracy_after_baking_interval": accuracy_interval,
                     "strengths": {prompt.name: strengths[prompt.text] for prompt in prompts},
                     "strength_min": min(strengths.values()), "wall_s": time.perf_counter() - variant_started})
        print(f"{kind} ({count} inputs, {len(keep)} retained): accuracy {accuracy:.3f} {accuracy_interval}; "
              f"strengths min {rows[-1]['strength_min']:.3f}; {rows[-1]['wall_s']:.0f} s", flush=True)
    atomic_write_json(Path(args.json), {
        "model": args.model, "run_dir": args.run_dir, "preset": args.preset, "overrides": args.set,
        "level": dataclasses.asdict(level.spec), "accuracy_after_training": trained,
        "accuracy_after_training_interval": interval, "baking": dataclasses.asdict(config),
        "variants": rows, "wall_s": time.perf_counter() - started})
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
