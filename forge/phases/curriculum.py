"""Phase 5, curriculum and value baking: levels of rising difficulty, each trained and measured, with the
value prompts of ``forge/presets/prompts/values.yaml`` baked at full strength after every level.

Input: the previous phase's model (``model`` from BitNet, ``champion`` from EvoMerge). A BitNet model
(ternary and int8 layers) is dequantized first (``forge.quant.convert.dequantize_model``): training and LoRA baking need float
weights, so the output is a float model and the manifest says so. Per level (``forge.curriculum.levels``): held-out
accuracy before, a short AdamW training stage on the level's items, accuracy after, then the value prompts
baked together into one adapter on the level's questions (``forge.baking.bake_together``: baked one after
another on the same inputs, each bake overwrote the one before and the level's accuracy fell to 0), with
other training items' answers and some rehearsed easy direct answers held (retention: to their own tokens in the
tiny preset, ``baking.retention_target``),
each prompt's strength measured against the model the level's bakes started from, and the accuracy once more. A
level is passed when its accuracy after training reaches ``pass_accuracy``; each accuracy is recorded with a 95%
bootstrap interval over the held-out items, and each item's answer (0/1) for the paired intervals of the changes
(``benchmarks.scoreboard.bootstrap_interval``), tallied per task-world family too. With ``tool_use_items`` set,
every training stage also sees train-side tool-use transcripts in Phase 6's format
(``benchmarks.tooluse.training_examples``), so the A-cycle starts from a model that has seen tool calls. Each
finished level is saved to ``work/level_<k>`` with its records in the manifest; a rerun with the same config, input
and prompts continues after the last finished level.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from benchmarks.scoreboard import bootstrap_interval, paired_intervals
from benchmarks.tooluse import INITIAL_TOOL_PROMPT, ToolUseConfig, training_examples
from cluster.resources import gpu_memory_cap_bytes
from forge.artifacts import load_model_dir, read_manifest, save_model_dir, state_dict_hash, verify_model_dir
from forge.console import Progress
from forge.baking import bake_together
from forge.configtools import config_hash
from forge.curriculum.levels import (CurriculumPhaseConfig, Level, ValuePrompt, answer_loss, bake_inputs, build_levels,
                          count_tokens, level_accuracy, level_correct, level_passed, load_value_prompts,
                          rehearsal_pairs, retained_answers, right_by_family, train_stage, values_path)
from forge.criteria import criterion, missed
from forge.data.heldout import HELDOUT, REPLAY
from forge.data.replay import Replay
from forge.devices import limit_gpu_memory
from forge.modelinfo import max_positions
from forge.phases.base import MODEL_NAMES, PhaseContext, PhaseResult, single_input
from forge.quant.convert import dequantize_model

log = logging.getLogger(__name__)

PHASE = "curriculum"
HELDOUT_PERPLEXITY_CHARS = 6000  # Phase 1's held-out text measured before and after each level's steps
RESUME_KEY = "curriculum_resume"  # manifest entry of a level checkpoint: fingerprint and records so far
INTERVAL_RESAMPLES = 1000  # bootstrap resamples of each accuracy's interval (a few ms for a level's items)
INTERVAL_CONFIDENCE = 0.95
VALUE_STRENGTH_FLOOR = 0.8  # issue 19: each value prompt's strength on the phase's output, against its level's start
STAGES = ("before", "after_training", "after_baking")  # a level's three accuracy measurements, in order


FLOAT_OUTPUT_NOTE = ("the model handed on is float, not Phase 4's ternary and int4 storage: the levels train every "
                     "weight and the value bakes merge their LoRA updates into them; compressing it again (Phase 4's "
                     "guarded steps after Phase 5) is not done, so it is as large as Phase 3's")


def choose_input(inputs: dict[str, Path]) -> str:
    """The previous phase's model (``single_input``)."""
    if not inputs:
        raise ValueError("curriculum trains the previous phase's model; run it after bitnet or evomerge")
    name = single_input(inputs)
    if name is None:
        raise ValueError(f"curriculum cannot tell which input to train: got {', '.join(sorted(inputs))}, none named "
                         f"{' or '.join(MODEL_NAMES)}; run it after a phase that writes one of those")
    return name


def level_dir(ctx: PhaseContext, level: int) -> Path:
    return ctx.work_dir / f"level_{level}"


def tool_demonstrations(ctx: PhaseContext, cfg: CurriculumPhaseConfig, data_dir: str | None) -> list[tuple[str, str]]:
    """``tool_use_items`` train-side (context, transcript) pairs per source of Phase 6's tool-use sources, with
    its few-shot count and the spec's initial tool prompt: what the A-cycle will measure, on unseen items."""
    if cfg.tool_use_items == 0:
        return []
    tool = ctx.config.tool_persona
    config = ToolUseConfig(num_fewshot=tool.tool_fewshot, num_samples=0, seed=cfg.seed)
    return training_examples(tool.sources(data_dir is not None), config, INITIAL_TOOL_PROMPT, data_dir,
                             limit=cfg.tool_use_items)


def run_fingerprint(cfg: CurriculumPhaseConfig, data_dir: str | None, input_dir: Path,
                    prompts: Sequence[ValuePrompt], tool_pairs: Sequence[tuple[str, str]]) -> str:
    """What a level checkpoint must have been made from to be resumed: config, data, input model, prompts."""
    return config_hash({"config": dataclasses.asdict(cfg), "data_dir": data_dir,
                        "input_digest": read_manifest(input_dir)["digest"],
                        "prompts": [dataclasses.asdict(prompt) for prompt in prompts],
                        "tool_pairs": [list(pair) for pair in tool_pairs]})


def resume_state(ctx: PhaseContext, num_levels: int, fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint record of the last finished level of this same run (config, input, prompts), if any."""
    for level in range(num_levels, 0, -1):
        directory = level_dir(ctx, level)
        if not verify_model_dir(directory):
            continue
        state = read_manifest(directory).get(RESUME_KEY, {})
        if state.get("fingerprint") == fingerprint and len(state.get("records", [])) == level:
            return state
        log.warning("curriculum: %s was written by another config, input or prompt set; not resuming from it",
                    directory)
    return None


def accuracy_figures(model, tokenizer, level: Level,
                     cfg: CurriculumPhaseConfig) -> tuple[float, list[float], list[int]]:
    """Held-out accuracy of the level, its 95% bootstrap interval over the items, and each item's 0/1."""
    correct = np.array(level_correct(model, tokenizer, level.heldout, cfg.max_new_tokens), dtype=float)
    interval = bootstrap_interval([correct], np.mean, resamples=INTERVAL_RESAMPLES, seed=cfg.seed,
                                  confidence=INTERVAL_CONFIDENCE)
    return float(correct.mean()), list(interval), [int(c) for c in correct]


def change_interval(before: Sequence[int], after: Sequence[int], seed: int) -> list[float]:
    """The paired 95% bootstrap interval of the accuracy change from ``before`` to ``after`` (each held-out item's
    0/1, the same items in the same order)."""
    return paired_intervals([[before, after]], [1.0], resamples=INTERVAL_RESAMPLES, seed=seed,
                            confidence=INTERVAL_CONFIDENCE)[1]["difference_interval"]


def run_level(model, tokenizer, level: Level, prompts: Sequence[ValuePrompt], cfg: CurriculumPhaseConfig,
              extra_pairs: Sequence[tuple[str, str]] = (), replay: Replay | None = None,
              perplexity: Callable[[torch.nn.Module], float] | None = None,
              measure_teachers: bool = False) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train, measure and bake one level; returns the baked model and the level's record. ``perplexity``
    (held-out text) is recorded before, after training and after baking when given; ``measure_teachers``: the
    trained model's held-out accuracy with each prompt before the question too (``accuracy_prompted``; the phase
    asks it of the last level alone, whose bakes the strength criterion judges: it generates once per prompt)."""
    heldout = level.heldout
    record: dict[str, Any] = {**dataclasses.asdict(level.spec), "train_items": len(level.train),
                              "heldout_items": len(heldout)}
    (record["accuracy_before"], record["accuracy_before_interval"],
     record["correct_before"]) = accuracy_figures(model, tokenizer, level, cfg)
    record["heldout_answer_loss_before"] = answer_loss(model, tokenizer, heldout)
    if perplexity is not None:
        record["heldout_perplexity_before"] = perplexity(model)
    stage = train_stage(model, tokenizer, level.train, cfg, extra_pairs=extra_pairs, replay=replay,
                        replay_first_step=(level.spec.level - 1) * cfg.steps_per_level)
    record["training"] = dataclasses.asdict(stage)
    (record["accuracy_after_training"], record["accuracy_after_training_interval"],
     record["correct_after_training"]) = accuracy_figures(model, tokenizer, level, cfg)
    record["pass_accuracy"] = cfg.pass_accuracy
    record["passed"] = level_passed(record["accuracy_after_training"], cfg)
    record["heldout_answer_loss_after"] = answer_loss(model, tokenizer, heldout)
    if perplexity is not None:
        record["heldout_perplexity_after_training"] = perplexity(model)
    if measure_teachers:  # what a full-strength bake moves the model towards: its answers with the prompt in context
        record["accuracy_prompted"] = {
            prompt.name: level_accuracy(model, tokenizer, heldout, cfg.max_new_tokens, context=prompt.text)
            for prompt in prompts}

    started = time.perf_counter()
    retain = retained_answers(tokenizer, level, cfg, max_positions(model))
    model, baked = bake_together(model, tokenizer, [prompt.text for prompt in prompts],
                                 bake_inputs(level, cfg.bake_inputs), cfg.baking.at_strength("full"), retain=retain)
    record["bakes"] = [{"name": prompt.name, "kl_per_token": baked["kl_per_token"][prompt.text],
                        "strength_vs_level_start": baked["strengths"][prompt.text]} for prompt in prompts]
    joint = baked["joint"]
    record["joint_bake"] = {key: joint[key] for key in ("strength", "target_reached", "lora_scale",
                                                        "train_trajectories", "heldout_trajectories",
                                                        "retained_sequences")}
    record["joint_bake"]["retain_loss_last_epoch"] = joint["history"][-1]["retain_loss"]
    record["bake_time_s"] = time.perf_counter() - started
    model.eval()
    (record["accuracy_after_baking"], record["accuracy_after_baking_interval"],
     record["correct_after_baking"]) = accuracy_figures(model, tokenizer, level, cfg)
    record["bakes_kept_skill"] = bakes_kept_skill(record, cfg)
    record["heldout_by_family"] = heldout_by_family(level, record)
    if perplexity is not None:
        record["heldout_perplexity_after_baking"] = perplexity(model)
    return model, record


def heldout_by_family(level: Level, record: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Per task-world family of the level's held-out items: how many there are and how many were answered right
    at each of the level's three measurements (``{}`` for a level without families)."""
    tallies = {stage: right_by_family(level.heldout, record[f"correct_{stage}"]) for stage in STAGES}
    return {family: {"items": items, **{f"right_{stage}": tallies[stage][family][0] for stage in STAGES}}
            for family, (_, items) in tallies["before"].items()}


def family_figures(record: dict[str, Any]) -> str:
    """``add 0/57 -> 0/57 -> 0/57, cmp 22/71 -> 21/71 -> 39/71`` for a level of several families, else ``""``."""
    families = record.get("heldout_by_family", {})
    if len(families) < 2:
        return ""
    return ", ".join(f"{name} " + " -> ".join(f"{counts[f'right_{stage}']}/{counts['items']}" for stage in STAGES)
                     for name, counts in families.items())


def teachers_figures(record: dict[str, Any]) -> str:
    """The console's words for a level's ``accuracy_prompted`` (empty where it was not measured)."""
    teachers = record.get("accuracy_prompted")
    if not teachers:
        return ""
    return ("; trained accuracy with each prompt before the question (what full strength moves to) "
            + ", ".join(f"{name} {value:.3f}" for name, value in teachers.items()))


def unlearned_family_notes(records: Sequence[dict[str, Any]]) -> list[str]:
    """A note for each family of a several-family level whose held-out items were all answered wrong at each of the
    level's three measurements: the level's accuracy and its gain are then its other families' alone."""
    notes = []
    for record in records:
        families = record.get("heldout_by_family", {})
        if len(families) < 2:
            continue
        for name, counts in families.items():
            if not any(counts[f"right_{stage}"] for stage in STAGES):
                others = " and ".join(family for family in families if family != name)
                notes.append(f"level {record['level']}'s {name} problems ({counts['items']} held out) were answered "
                             f"right 0 times before the level's training, after its {record['training']['steps']} "
                             f"steps and after its bakes: the level's accuracy and its gain are its {others} "
                             "problems'")
    return notes


def bakes_kept_skill(record: dict[str, Any], cfg: CurriculumPhaseConfig) -> bool:
    """The level's held-out accuracy after the bakes is at most ``bake_skill_tolerance`` below its accuracy after
    training (the bakes did not erase what the level taught)."""
    return record["accuracy_after_baking"] >= record["accuracy_after_training"] - cfg.bake_skill_tolerance


def phase_criteria(records: Sequence[dict[str, Any]], cfg: CurriculumPhaseConfig) -> dict[str, dict[str, Any]]:
    """Phase 5's criteria (issue 19): every level's training raises its accuracy, the bakes keep each level's
    skill, and each value prompt's strength on the phase's output is at least ``VALUE_STRENGTH_FLOOR``. The two
    accuracy changes carry the paired interval of the level that decides them (the same held-out items before and
    after): a change of one item of 128 reads as noise."""
    last = records[-1]

    def weakest(start: str, end: str) -> tuple[float, list[float] | None]:
        """The smallest change from ``start`` to ``end`` over the levels, with its level's paired interval (none for
        records kept before the per-item answers were)."""
        record = min(records, key=lambda r: r[f"accuracy_{end}"] - r[f"accuracy_{start}"])
        items = record.get(f"correct_{start}"), record.get(f"correct_{end}")
        interval = None if None in items else change_interval(*items, seed=cfg.seed)
        return record[f"accuracy_{end}"] - record[f"accuracy_{start}"], interval

    gain, gain_interval = weakest("before", "after_training")
    bake_change, bake_interval = weakest("after_training", "after_baking")
    strength = min(bake["strength_vs_level_start"] for bake in last["bakes"])
    return {
        "level_accuracy_gain_min": criterion(gain, ">", 0.0, interval=gain_interval),
        "bake_accuracy_change_min": criterion(bake_change, ">=", -cfg.bake_skill_tolerance, interval=bake_interval),
        "value_strength_at_end_min": criterion(
            strength, ">=", VALUE_STRENGTH_FLOOR,
            out_of_reach=None if strength >= VALUE_STRENGTH_FLOOR else prompts_cost_the_skill(last, cfg)),
    }


def prompts_cost_the_skill(record: dict[str, Any], cfg: CurriculumPhaseConfig) -> str | None:
    """Why the value strength floor and the bakes' skill tolerance cannot both hold on this level, when they
    cannot: some prompt's teacher (the trained model with the prompt in its context) answers the level's held-out
    items more than ``bake_skill_tolerance`` below the trained model, and a bake at full strength makes the model
    answer as its teachers do. None when every teacher answers within the tolerance (or was not measured)."""
    teachers = record.get("accuracy_prompted")
    if not teachers:
        return None
    trained = record["accuracy_after_training"]
    name, worst = min(teachers.items(), key=lambda item: item[1])
    if worst >= trained - cfg.bake_skill_tolerance:
        return None
    return (f"with the value prompts in its context the trained level-{record['level']} model answers its held-out "
            f"items at {worst:.3f}-{max(teachers.values()):.3f} against {trained:.3f} without ({name} {worst:.3f}, "
            f"more than the {cfg.bake_skill_tolerance:g} the bakes may cost): the prompts' full strength is their "
            "teachers' answers, which bake_accuracy_change_min keeps the model from")


def level_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """The flat per-level figures logged to the tracker."""
    metrics = {key: record[key] for key in ("level", "accuracy_before", "accuracy_after_training",
                                            "accuracy_after_baking", "heldout_answer_loss_before",
                                            "heldout_answer_loss_after", "bake_time_s")}
    metrics["passed"] = int(record["passed"])
    metrics["joint_bake_strength"] = record["joint_bake"]["strength"]
    metrics["train_loss_first"] = record["training"]["loss_first"]
    metrics["train_loss_last"] = record["training"]["loss_last"]
    for key in ("heldout_perplexity_before", "heldout_perplexity_after_training", "heldout_perplexity_after_baking"):
        if key in record:
            metrics[key] = record[key]
    for bake in record["bakes"]:
        metrics[f"strength/{bake['name']}"] = bake["strength_vs_level_start"]
    return metrics


def level_name(level: Level) -> str:
    """The level's source, with the task world's families and level, e.g. ``taskworld add+cmp level 2``."""
    spec = level.spec
    return f"taskworld {'+'.join(spec.families)} level {spec.taskworld_level}" if spec.source == "taskworld" \
        else spec.source


def figure(record: dict[str, Any], key: str) -> str:
    """An accuracy with its interval, e.g. ``0.250 [0.180, 0.320]``."""
    low, high = record[f"{key}_interval"]
    return f"{record[key]:.3f} [{low:.3f}, {high:.3f}]"


def run(ctx: PhaseContext) -> PhaseResult:
    cfg: CurriculumPhaseConfig = ctx.config.curriculum
    data_dir = cfg.data_dir or ctx.data_dir
    values_file = values_path(cfg)
    prompts = load_value_prompts(values_file)
    name = choose_input(ctx.inputs)
    input_dir = ctx.inputs[name]
    levels = build_levels(cfg, data_dir)
    tool_pairs, rehearsal = tool_demonstrations(ctx, cfg, data_dir), rehearsal_pairs(cfg)
    fingerprint = run_fingerprint(cfg, data_dir, input_dir, prompts, tool_pairs)
    device = "cuda" if ctx.config.device != "cpu" and torch.cuda.is_available() else "cpu"
    limit_gpu_memory(device, gpu_memory_cap_bytes())  # ray.gpu_memory_gib: the phase has the GPU, up to the cap

    state = resume_state(ctx, len(levels), fingerprint)
    if state is None:
        model, tokenizer = load_model_dir(input_dir, device=device)
        dequantized = dequantize_model(model)
        state = {"fingerprint": fingerprint, "records": [], "input_bitnet_quantized": bool(dequantized),
                 "dequantized_layers": dequantized}
        resumed_after = 0
    else:
        resumed_after = len(state["records"])
        model, tokenizer = load_model_dir(level_dir(ctx, resumed_after), device=device)
        print(f"[forge] curriculum: resuming after level {resumed_after} ({level_dir(ctx, resumed_after)})",
              flush=True)
    print(f"[forge] curriculum: {len(levels)} levels ({', '.join(map(level_name, levels))}) on "
          f"{name} ({input_dir}); {len(prompts)} value prompts from {values_file}", flush=True)

    replay = (Replay(tokenizer, ctx.read_texts(REPLAY, 10**12), cfg.replay_seq_len,
                     cfg.replay_sequences, seed=cfg.seed) if cfg.replay_sequences else None)
    heldout_texts = ctx.read_texts(HELDOUT, HELDOUT_PERPLEXITY_CHARS)

    measured: dict[str, float] = {}  # by weights hash: a level's start is the last level's baked model

    def heldout_perplexity(level_model: torch.nn.Module) -> float:
        from benchmarks.lm import perplexity

        weights = state_dict_hash(level_model.state_dict())
        if weights not in measured:
            measured[weights] = perplexity(level_model, tokenizer, heldout_texts, max_length=cfg.replay_seq_len)
        return measured[weights]

    tracker = ctx.tracker(PHASE, run_config=dataclasses.asdict(cfg))
    progress = Progress("curriculum: levels", len(levels), "level", done=resumed_after)
    try:
        for level in levels[resumed_after:]:
            model, record = run_level(model, tokenizer, level, prompts, cfg, tool_pairs + rehearsal, replay,
                                      heldout_perplexity, measure_teachers=level is levels[-1])
            state["records"].append(record)
            tracker.log(level_metrics(record), step=level.spec.level)
            save_model_dir(model, tokenizer, level_dir(ctx, level.spec.level), phase=PHASE,
                           extra={RESUME_KEY: state})
            by_family = family_figures(record)
            by_family = f" (by family: {by_family})" if by_family else ""
            print(f"[forge] curriculum: level {level.spec.level} ({level_name(level)}): accuracy "
                  f"{figure(record, 'accuracy_before')} -> {figure(record, 'accuracy_after_training')} (trained, "
                  f"{'passed' if record['passed'] else 'not passed'} at {cfg.pass_accuracy:.2f}) -> "
                  f"{figure(record, 'accuracy_after_baking')} (baked){by_family}; held-out perplexity "
                  f"{record['heldout_perplexity_before']:.1f} -> {record['heldout_perplexity_after_training']:.1f} -> "
                  f"{record['heldout_perplexity_after_baking']:.1f}; "
                  "strengths " + ", ".join(f"{b['name']} {b['strength_vs_level_start']:.3f}" for b in record["bakes"])
                  + teachers_figures(record), flush=True)
            progress.update()
    finally:
        progress.close()
        tracker.finish()

    records = state["records"]
    criteria = phase_criteria(records, cfg)
    quantized = state["input_bitnet_quantized"]
    metadata = {
        "input": name,
        "input_dir": str(input_dir),
        "input_bitnet_quantized": quantized,
        "dequantized_layers": state["dequantized_layers"],
        "output_format": "float (dequantized from ternary / int8)" if quantized else "float",
        "curriculum_level_reached": records[-1]["level"],
        "num_levels": len(levels),
        "pass_accuracy": cfg.pass_accuracy,
        "levels_passed": [r["level"] for r in records if r["passed"]],
        "levels": records,
        "prompts_baked": [{"name": p.name, "text": p.text, "tokens": count_tokens(tokenizer, p.text)}
                          for p in prompts],
        "measured_strengths": {p.name: [next(b["strength_vs_level_start"] for b in r["bakes"] if b["name"] == p.name)
                                        for r in records] for p in prompts},
        "tool_use_demonstrations": {"count": len(tool_pairs), "prompt": INITIAL_TOOL_PROMPT,
                                    "sources": ctx.config.tool_persona.sources(data_dir is not None)
                                    if tool_pairs else []},
        "rehearsal_items": len(rehearsal),
        "values_file": str(values_file),
        "data_dir": data_dir,
        "optimizer": "AdamW",
        "config": dataclasses.asdict(cfg),
        "criteria": criteria,
        "criteria_missed": missed(criteria),
        "notes": ([FLOAT_OUTPUT_NOTE] if quantized else []) + unlearned_family_notes(records),
    }
    out_dir = save_model_dir(model, tokenizer, ctx.phase_dir / "model", phase=PHASE, extra=metadata)
    summary = {key: metadata[key] for key in ("input", "input_bitnet_quantized", "output_format",
                                              "curriculum_level_reached", "num_levels", "pass_accuracy",
                                              "levels_passed", "measured_strengths", "criteria",
                                              "criteria_missed", "notes")}
    summary["resumed_after_level"] = resumed_after
    summary["accuracy"] = {r["level"]: {key: r[key] for key in (
        "accuracy_before", "accuracy_before_interval", "accuracy_after_training", "accuracy_after_training_interval",
        "accuracy_after_baking", "accuracy_prompted", "passed", "bakes_kept_skill", "heldout_by_family") if key in r}
        for r in records}
    return PhaseResult(outputs={"model": out_dir}, summary=summary)
