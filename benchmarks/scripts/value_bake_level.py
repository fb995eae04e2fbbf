"""Phase 5's joint value bake of one level, reproduced from a finished run and baked again under variants, with the
ceiling a joint bake can reach. JSON out.

    python benchmarks/scripts/value_bake_level.py --run-dir /tmp/run9/tiny --level 2 --threads 2 \\
        --json benchmarks/results/value_bake_level2.json \\
        --variant phase --variant lr_0.002 curriculum.baking.learning_rate=0.002

The level is trained as the phase trains it (from the run's previous level checkpoint, or Phase 4's model for level
1, with the tool transcripts, rehearsal and Phase 1 replay of the phase), and its held-out accuracy is checked
against the run's record, so every variant starts from the model the phase baked. A variant is a name and config
overrides (``key=value``) of the bake (``curriculum.baking.*``, ``curriculum.bake_*``); ``inputs=text`` bakes on
the openings of Phase 1's replay documents that are not task-world problems (``curriculum.bake_inputs`` of them,
``TEXT_INPUT_CHARS`` characters each) instead of the level's questions. Per variant: each value prompt's strength
against the trained model, the joint bake's held-out strength per epoch, the level's accuracy and the scoreboard's
direct-answer accuracy (``taskworld_easy``, thinking suppressed: what the gate after Phase 5 compares), the latter also
after training.

The prompted teachers: the trained model's own accuracy with each value prompt in its context (the context the bake's
teacher reads: the prompt's tokens, then the question's), on the level's held-out items and on the scoreboard's direct
problems. A bake at strength 1 makes the unprompted model answer as its prompted teacher does; where a teacher answers
worse than the trained model, full strength and the level's skill pull apart.

The ceiling: one student (the model without a prompt) serves all six prompts on the same questions, so where the
prompted teachers disagree it cannot match each. The best single next-token distribution for the summed KL of the
six is their mixture (the mean of their probabilities); per prompt, ``1 - KL(teacher || mixture) / KL(teacher ||
model)`` on the prompt's held-out trajectories is the strength the joint bake could reach at best there.
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.scoreboard import OFFLINE_TASKS, task_figures  # noqa: E402
from benchmarks.tasks import read_taskworld, select_docs  # noqa: E402
from forge.artifacts import atomic_write_json, load_model_dir, read_json  # noqa: E402
from forge.baking import bake_together  # noqa: E402
from forge.baking.compose import frozen_copy, prompt_target  # noqa: E402
from forge.baking.hidden import final_hidden  # noqa: E402
from forge.baking.trajectories import Trajectory, collate, encode_contexts  # noqa: E402
from forge.config import load_pipeline_config  # noqa: E402
from forge.curriculum.levels import (bake_inputs, build_levels, level_accuracy, load_value_prompts,  # noqa: E402
                                     rehearsal_pairs, retained_answers, train_stage, values_path)
from forge.data.taskworld import is_correct  # noqa: E402
from forge.data.heldout import REPLAY, TEXT_FILES, read_texts  # noqa: E402
from forge.data.replay import Replay  # noqa: E402
from forge.modelinfo import max_positions, pad_token_id  # noqa: E402
from forge.phases.base import PhaseContext  # noqa: E402
from forge.phases.curriculum import accuracy_figures, tool_demonstrations  # noqa: E402
from forge.quant.convert import dequantize_model  # noqa: E402
from forge.quietstar.generate import generate  # noqa: E402


TEXT_INPUT_CHARS = 80  # characters of a replay document's opening used as a bake input (cut at a space)


def text_inputs(texts: list[str], count: int) -> list[str]:
    """The openings of ``count`` documents that are not task-world problems, evenly across ``texts``."""
    prose = [text for text in texts if "Question:" not in text and len(text) > TEXT_INPUT_CHARS]
    picked = prose[::max(1, len(prose) // count)][:count]
    return [text[:TEXT_INPUT_CHARS].rsplit(" ", 1)[0] for text in picked]


@torch.no_grad()
def teacher_log_probs(model, tokenizer, trajectories: list[Trajectory], prompt_ids: list[int],
                      prefix: int) -> torch.Tensor:
    """Log-probabilities (tokens, vocab) of ``model`` prompted with ``prompt_ids`` at the generated positions of
    ``trajectories`` (their inputs, read from the student contexts after the ``prefix`` special tokens)."""
    prompted = [Trajectory(tuple(t.student_context[:prefix]) + tuple(prompt_ids) + tuple(t.student_context[prefix:]),
                           t.student_context, t.generated) for t in trajectories]
    batch = collate(prompted, pad_token_id(tokenizer), torch.device("cpu"))
    hidden = final_hidden(model, batch.teacher_ids)[batch.teacher_mask]
    return F.log_softmax(model.get_output_embeddings()(hidden).float(), dim=-1)


@torch.no_grad()
def joint_ceiling(model, tokenizer, prompts: list[str], inputs: list[str], config) -> dict[str, float]:
    """Per prompt, the strength the best single student reaches on its held-out trajectories (module docstring)."""
    prefix = len(tokenizer("", add_special_tokens=True)["input_ids"])
    ids = {prompt: tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts}
    ceilings = {}
    for prompt in prompts:
        target = prompt_target(model, tokenizer, prompt, inputs, config)
        heldout = target.trajectories.heldout
        own = teacher_log_probs(model, tokenizer, heldout, ids[prompt], prefix)
        if any(t.teacher_context != t.student_context[:prefix] + tuple(ids[prompt]) + t.student_context[prefix:]
               for t in heldout):
            raise RuntimeError("a prompted context is not prefix + prompt + input: the mixture would score other "
                               "contexts than the bake's")
        others = torch.stack([teacher_log_probs(model, tokenizer, heldout, ids[p], prefix) for p in prompts])
        mixture = torch.logsumexp(others, dim=0) - math.log(len(prompts))
        kl_mixture = float((own.exp() * (own - mixture)).sum(-1).mean())
        ceilings[prompt] = 1.0 - kl_mixture / target.kl_reference
    return ceilings


@torch.no_grad()
def prompted_teachers(model, tokenizer, prompts: dict[str, str], level, config) -> dict:
    """Per prompt (and without one): the level's held-out accuracy with the prompt before each question
    (``level_accuracy``'s ``context``), and the scoreboard's direct problems (its item draw) answered the same way,
    read from the first line as the scoreboard reads them (thinking forbidden); with each set's first output."""
    s = config.scoreboard.settings()
    easy = select_docs(read_taskworld(easy=True), s.offline_task_items, s.seed)
    max_new_tokens = config.curriculum.max_new_tokens
    rows = {}
    for name, prompt in {"(no prompt)": "", **prompts}.items():
        if prompt and any(tokenizer(prompt + doc["prompt"], add_special_tokens=True)["input_ids"]
                          != encode_contexts(tokenizer, prompt, doc["prompt"])[0] for doc in easy):
            raise RuntimeError(f"{name}: prompt + question tokenizes otherwise than the bake's teacher context")
        outputs = generate(model, tokenizer, [prompt + doc["prompt"] for doc in easy], max_new_tokens=max_new_tokens,
                           allow_thinking=False)
        direct_right = [is_correct(doc["answer"], output.visible_text.split("\n", 1)[0])
                        for doc, output in zip(easy, outputs)]
        rows[name] = {"level": level_accuracy(model, tokenizer, level.heldout, max_new_tokens, context=prompt),
                      "scoreboard_direct": sum(direct_right) / len(direct_right),
                      "scoreboard_direct_example": outputs[0].visible_text}
    return rows


def scoreboard_direct(model, tokenizer, config) -> float:
    """The scoreboard's offline task accuracy of ``model`` (its settings from the run's config)."""
    return task_figures(model, tokenizer, OFFLINE_TASKS, None, config.scoreboard.settings())["task_accuracy"]["value"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", required=True, help="a finished run's preset folder, e.g. /tmp/run9/tiny")
    parser.add_argument("--level", type=int, default=2, help="the curriculum level to reproduce and bake")
    parser.add_argument("--json", required=True, help="where to write the figures")
    parser.add_argument("--variant", nargs="+", action="append", metavar=("NAME", "KEY=VALUE"), required=True,
                        help="a bake variant: a name, then config overrides (repeatable)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    run_dir = Path(args.run_dir)
    cfg = load_pipeline_config(config_file=str(run_dir / "config.json"))
    phase = cfg.curriculum
    level = build_levels(phase, None)[args.level - 1]
    record = read_json(run_dir / "curriculum" / "model" / "manifest.json")["levels"][args.level - 1]
    start = (run_dir / "bitnet" / "model" if args.level == 1
             else run_dir / "curriculum" / "work" / f"level_{args.level - 1}")
    model, tokenizer = load_model_dir(start, device="cpu")
    dequantize_model(model)
    ctx = PhaseContext(config=cfg, run_dir=run_dir, phase_dir=run_dir / "curriculum", inputs={})
    extra = tool_demonstrations(ctx, phase, None) + rehearsal_pairs(phase)  # what the phase shuffles into a level
    replay_texts = read_texts(run_dir / "cognate" / TEXT_FILES[REPLAY], 10**12)
    replay = Replay(tokenizer, replay_texts, phase.replay_seq_len, phase.replay_sequences, seed=phase.seed)
    started = time.perf_counter()
    train_stage(model, tokenizer, level.train, phase, extra_pairs=extra, replay=replay,
                replay_first_step=(level.spec.level - 1) * phase.steps_per_level)
    model.eval()
    trained, interval, _ = accuracy_figures(model, tokenizer, level, phase)
    trained_direct = scoreboard_direct(model, tokenizer, cfg)
    print(f"level {args.level} trained: accuracy {trained:.3f} (the run's {record['accuracy_after_training']:.3f}), "
          f"scoreboard direct {trained_direct:.3f}; {time.perf_counter() - started:.0f} s", flush=True)
    if trained != record["accuracy_after_training"]:
        raise SystemExit(f"the level trained to {trained}, not the run's {record['accuracy_after_training']}: this "
                         "tree or config does not reproduce the run; use the run's commit")
    names = {prompt.text: prompt.name for prompt in load_value_prompts(values_path(phase))}
    prompts = list(names)
    teachers = prompted_teachers(model, tokenizer, {names[p]: p for p in prompts}, level, cfg)
    print("prompted teachers (level / scoreboard direct): " + ", ".join(
        f"{name} {row['level']:.3f} / {row['scoreboard_direct']:.3f}"
        for name, row in teachers.items()), flush=True)
    full = phase.baking.at_strength("full")
    ceiling = joint_ceiling(frozen_copy(model), tokenizer, prompts, bake_inputs(level, phase.bake_inputs), full)
    print("ceiling: " + ", ".join(f"{names[p]} {value:.3f}" for p, value in ceiling.items()), flush=True)
    rows = []
    for name, *overrides in args.variant:
        variant_started = time.perf_counter()
        on_text = "inputs=text" in overrides
        overrides = [item for item in overrides if item != "inputs=text"]
        variant = load_pipeline_config(config_file=str(run_dir / "config.json"), overrides=overrides).curriculum
        retain = retained_answers(tokenizer, level, variant, max_positions(model))
        inputs = (text_inputs(replay_texts, variant.bake_inputs) if on_text
                  else bake_inputs(level, variant.bake_inputs))
        baked, bake = bake_together(copy.deepcopy(model), tokenizer, prompts, inputs,
                                    variant.baking.at_strength("full"), retain=retain)
        baked.eval()
        accuracy, _, _ = accuracy_figures(baked, tokenizer, level, phase)
        direct = scoreboard_direct(baked, tokenizer, cfg)
        strengths = {names[p]: value for p, value in bake["strengths"].items()}
        rows.append({"variant": name, "overrides": overrides, "inputs": "text" if on_text else "level",
                     "example_input": inputs[0], "strengths": strengths,
                     "strength_min": min(strengths.values()),
                     "joint_heldout_strength_per_epoch": [row["strength"] for row in bake["joint"]["history"]],
                     "accuracy_after_baking": accuracy, "scoreboard_direct_after_baking": direct,
                     "retained_sequences": len(retain), "wall_s": time.perf_counter() - variant_started})
        print(f"{name}: strengths min {rows[-1]['strength_min']:.3f}, per epoch "
              f"{[round(s, 3) for s in rows[-1]['joint_heldout_strength_per_epoch']]}, accuracy {accuracy:.3f}, "
              f"scoreboard direct {direct:.3f}; "
              f"{rows[-1]['wall_s']:.0f} s", flush=True)
    atomic_write_json(Path(args.json), {
        "run_dir": str(run_dir), "level": args.level, "accuracy_after_training": trained,
        "accuracy_after_training_interval": interval, "scoreboard_direct_after_training": trained_direct,
        "ceiling": {names[p]: value for p, value in ceiling.items()}, "prompted_teachers": teachers,
        "variants": rows,
        "wall_s": time.perf_counter() - started})
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
