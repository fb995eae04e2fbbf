"""Phase 5's levels on a real model: held-out accuracy of every curriculum level before and after each level's
training stage (``forge.curriculum.levels.train_stage``, the phase's own training: its steps, tool-use
demonstrations and Phase 1 replay), with 95% bootstrap intervals and the pass rule. JSON out.

    python benchmarks/scripts/curriculum_levels.py --model /tmp/default-run3/tiny/bitnet/model \\
        --run-dir /tmp/default-run3/tiny --json /tmp/curriculum_levels.json \\
        [--set 'curriculum.taskworld_ladder=[{families: [add, cmp], level: 2}, {families: [add], level: 3}]' \\
         --set curriculum.num_levels=2] [--bake]

The levels are built from the preset's ``curriculum:`` section (with ``--set`` overrides, as the pipeline
takes them) and trained in order on one model, as the phase does; a ternary (BitNet) model is dequantized
first, as the phase does. ``--run-dir`` is the run whose Phase 1 texts are replayed (``cognate/replay_texts.json``);
without it the stages run without replay. The value bakes are left out unless ``--bake`` (they take about
a minute per level on two cores and do not change what a level's training does).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from forge.artifacts import atomic_write_json, load_model_dir  # noqa: E402
from forge.config import load_pipeline_config  # noqa: E402
from forge.curriculum.levels import (build_levels, level_passed, load_value_prompts, rehearsal_pairs,  # noqa: E402
                                     train_stage, values_path)
from forge.data.heldout import REPLAY, TEXT_FILES  # noqa: E402
from forge.data.replay import Replay  # noqa: E402
from forge.phases.base import PhaseContext  # noqa: E402
from forge.phases.curriculum import accuracy_figures, level_name, run_level, tool_demonstrations  # noqa: E402
from forge.quant.convert import dequantize_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a model directory (Phase 4's bitnet/model, or any later one)")
    parser.add_argument("--json", required=True, help="where to write the figures")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. curriculum.steps_per_level=30 (repeatable)")
    parser.add_argument("--run-dir", help="the run whose Phase 1 replay texts the stages replay (its cognate/ folder)")
    parser.add_argument("--data-dir", help="a data folder (SVAMP/GSM8K top levels, tool-use sources); default: none")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (two on two busy shared cores "
                                                                  "measured 50x slower than one)")
    parser.add_argument("--bake", action="store_true", help="also bake the value prompts after each level, as the "
                                                            "phase does")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = load_pipeline_config(args.preset, overrides=args.set)
    cfg = config.curriculum
    levels = build_levels(cfg, args.data_dir)
    run_dir = Path(args.run_dir) if args.run_dir else ROOT / "runs" / "curriculum_levels"
    ctx = PhaseContext(config=config, run_dir=run_dir, phase_dir=run_dir / "curriculum", inputs={},
                       texts={REPLAY: run_dir / "cognate" / TEXT_FILES[REPLAY]} if args.run_dir else {})
    tool_pairs, rehearsal = tool_demonstrations(ctx, cfg, args.data_dir), rehearsal_pairs(cfg)
    extra_pairs = tool_pairs + rehearsal  # what the phase shuffles into each level
    model, tokenizer = load_model_dir(args.model, device="cpu")
    dequantized = dequantize_model(model)
    replay = (Replay(tokenizer, ctx.read_texts(REPLAY, 10**12), cfg.replay_seq_len, cfg.replay_sequences,
                     seed=cfg.seed) if cfg.replay_sequences and args.run_dir else None)
    prompts = load_value_prompts(values_path(cfg)) if args.bake else []

    def measure_all() -> list[dict]:
        rows = []
        for level in levels:
            accuracy, interval, _ = accuracy_figures(model, tokenizer, level, cfg)
            rows.append({"level": level.spec.level, "accuracy": accuracy, "interval": interval})
        return rows

    started = time.perf_counter()
    before_all = measure_all()
    stages = []
    for level in levels:
        stage_started = time.perf_counter()
        record = {}
        if args.bake:
            model, record = run_level(model, tokenizer, level, prompts, cfg, extra_pairs, replay)
            training = record["training"]
        else:
            training = dataclasses.asdict(train_stage(model, tokenizer, level.train, cfg, extra_pairs=extra_pairs,
                                                      replay=replay,
                                                      replay_first_step=(level.spec.level - 1) * cfg.steps_per_level))
        after_all = measure_all()  # every level after this level's stage (and, with --bake, its bakes)
        after = ({"accuracy": record["accuracy_after_training"], "interval": record["accuracy_after_training_interval"]}
                 if args.bake else after_all[level.spec.level - 1])
        before = (stages[-1]["after_all"] if stages else before_all)[level.spec.level - 1]
        stages.append({
            "level": level.spec.level, "name": level_name(level), "train_items": len(level.train),
            "heldout_items": len(level.heldout), "accuracy_before": before["accuracy"],
            "accuracy_before_interval": before["interval"], "accuracy_after_training": after["accuracy"],
            "accuracy_after_training_interval": after["interval"], "passed": level_passed(after["accuracy"], cfg),
            "accuracy_after_baking": record.get("accuracy_after_baking"),
            "accuracy_after_baking_interval": record.get("accuracy_after_baking_interval"),
            "bakes": record.get("bakes"), "training": training, "after_all": after_all,
            "wall_s": time.perf_counter() - stage_started})
        print(f"level {level.spec.level} ({level_name(level)}): {before['accuracy']:.3f} {before['interval']} -> "
              f"{after['accuracy']:.3f} {after['interval']}, passed={stages[-1]['passed']}, "
              + (f"after baking {record['accuracy_after_baking']:.3f}, " if args.bake else "")
              + f"loss {training['loss_first']:.3f} -> {training['loss_last']:.3f}, "
              f"{stages[-1]['wall_s']:.0f} s", flush=True)
    result = {"model": args.model, "preset": args.preset, "overrides": args.set, "run_dir": args.run_dir,
              "dequantized_layers": len(dequantized), "tool_use_pairs": len(tool_pairs),
              "rehearsal_pairs": len(rehearsal),
              "replay": replay is not None, "bakes": args.bake, "config": dataclasses.asdict(cfg),
              "before_all": before_all, "levels": stages, "wall_s": time.perf_counter() - started}
    atomic_write_json(Path(args.json), result)
    print(f"wrote {args.json} ({result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
