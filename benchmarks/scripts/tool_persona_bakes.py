"""Phase 6's bakes on Phase 5's model: the initial tool prompt, then a persona (the first human-written one, what
the B-cycle of the default run baked), half-baked one after the other by the phase's own hook
(``ToolPersonaWork.half_bake``) holding what the phase's bakes hold (``bake_retention``); per variant each bake's
held-out and calibration strength and the scoreboard's task accuracy (taskworld_easy, its items and settings) after
it. JSON out.

    python benchmarks/scripts/tool_persona_bakes.py --model RUN/curriculum/model --json out.json \\
        --variant none tool_persona.bake_retain_items=0 --variant retained [--cycles A]

A variant is a name and the config overrides (``key=value``) on top of the preset.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.scoreboard import OFFLINE_TASKS, task_figures  # noqa: E402
from benchmarks.tooluse import INITIAL_TOOL_PROMPT  # noqa: E402
from forge.abcycles.prompt_variants import HUMAN_PERSONAS  # noqa: E402
from forge.artifacts import atomic_write_json, load_model_dir  # noqa: E402
from forge.config import load_pipeline_config  # noqa: E402
from forge.modelinfo import max_positions  # noqa: E402
from forge.phases.base import PhaseContext  # noqa: E402
from forge.phases.tool_persona import ToolPersonaWork, bake_questions, bake_retention  # noqa: E402


def task_accuracy(model, tokenizer, config) -> dict[str, float]:
    """The scoreboard's offline task accuracy (taskworld_easy, its items and settings) with its interval."""
    (task,) = OFFLINE_TASKS
    figure = task_figures(model, tokenizer, [task], None, config.scoreboard.settings())[f"task_accuracy/{task}"]
    return {"task_accuracy": figure["value"], "interval": [figure["low"], figure["high"]], "items": figure["n"]}


def run_variant(name: str, overrides: list[str], model_dir: str, preset: str, cycles: str) -> dict:
    config = load_pipeline_config(preset, overrides=overrides)
    phase = config.tool_persona
    model, tokenizer = load_model_dir(model_dir, device="cpu")
    model.eval()
    sources = phase.sources(False)
    retain = bake_retention(tokenizer, phase, sources, None, max_positions(model), config.seed)
    inputs = bake_questions(sources, phase.bake_inputs, None)
    row = {"variant": name, "overrides": overrides, "retained_sequences": len(retain),
           "retention_weight": phase.baking.retention_weight, "bakes": []}
    with tempfile.TemporaryDirectory() as tmp:
        ctx = PhaseContext(config=config, run_dir=Path(tmp), phase_dir=Path(tmp) / "tool_persona", inputs={})
        work = ToolPersonaWork(ctx, model, tokenizer, [], tool_pool=[], tool_validation=[], persona_tasks={},
                               bake_inputs=inputs, retain=retain, tracker=None)
        for cycle, prompt in (("A", INITIAL_TOOL_PROMPT), ("B", HUMAN_PERSONAS[0])):
            if cycle not in cycles:
                continue
            started = time.perf_counter()
            strength = work.half_bake(cycle, prompt, 0)
            bake_s = time.perf_counter() - started
            record = work.prompts["bakes"][-1]
            row["bakes"].append({"cycle": cycle, "prompt": prompt, "measured_strength": strength,
                                 "calibration_strength": record["calibration_strength"],
                                 "target_reached": record["target_reached"], "lora_scale": record["lora_scale"],
                                 "retain_loss_last_epoch": record["retain_loss_last_epoch"], "bake_s": bake_s,
                                 **task_accuracy(work.model, tokenizer, config)})
            print(f"{name}: {cycle} half-bake strength {strength:.3f} (calibration "
                  f"{record['calibration_strength']:.3f}, LoRA scale {record['lora_scale']:.3f}), task accuracy "
                  f"{row['bakes'][-1]['task_accuracy']:.3f}, {bake_s:.0f} s", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="Phase 6's input model directory (Phase 5's curriculum/model)")
    parser.add_argument("--json", required=True, help="where to write the figures")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--variant", nargs="+", action="append", required=True, metavar=("NAME", "KEY=VALUE"),
                        help="a variant: its name, then config overrides (repeatable)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--cycles", default="AB", choices=["A", "B", "AB"],
                        help="which half-bakes: A the initial tool prompt, B a persona, AB both (the persona after the tool prompt)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model_dir(args.model, device="cpu")
    config = load_pipeline_config(args.preset)
    out = {"model": args.model, "preset": args.preset, "input": task_accuracy(model.eval(), tokenizer, config),
           "variants": []}
    print(f"input: task accuracy {out['input']['task_accuracy']:.3f}", flush=True)
    for name, *overrides in args.variant:
        torch.manual_seed(0)
        out["variants"].append(run_variant(name, overrides, args.model, args.preset, args.cycles))
        atomic_write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
