"""Phase 3, Quiet-STaR: the EvoMerge champion learns to think before it speaks.

Steps, on the driver (one model, sequential training):
0. The 12 thinking tokens are added (``forge.quietstar.tokens``) and the reasoning data is built and
   validated: real traces from the data folder's solved problems (``offline``), the task world's
   multi-digit problems with their worked traces (``taskworld``, the default without a data folder),
   generated word problems (``synthetic``), or a file written by ``python -m forge.quietstar`` (``file``,
   e.g. from the API generator).
1. The reasoning format is baked by full fine-tuning (``forge.quietstar.format_training``), with the spec's
   convergence check and its mitigation.
2. Quiet-STaR RL on thoughts (``forge.quietstar.rl``), with anti-theater checks and rollback.
Accuracy on held-out problems, thinking-token usage and held-out perplexity are measured before Phase 3,
after Step 1 and after Step 2; after each step also the accuracy with thinking forbidden (the thoughts
removed: the ablation that shows whether they help); generation speed at the end. The summary records
the spec's criteria as met or missed.

Resume: Step 1 and Step 2 checkpoint under ``work/``; a finished step's model is kept in
``work/step1_model`` so a rerun goes straight to Step 2.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from cluster.resources import gpu_memory_cap_bytes
from forge.artifacts import (atomic_write_json, load_model_dir, read_json, read_manifest, save_model_dir,
                            state_dict_hash, verify_model_dir)
from forge.console import Progress
from forge.criteria import criterion, missed
from forge.data import taskworld
from forge.data.heldout import HELDOUT, REPLAY
from forge.devices import limit_gpu_memory
from forge.phases.base import PhaseContext, PhaseResult, single_input
from forge.quietstar.data import REASONING, dataset_metadata, read_dataset, validate_examples, write_dataset
from forge.quietstar.format_training import bake_reasoning_format, select_examples
from forge.quietstar.generate import answer_accuracy, generation_speed
from forge.quietstar.offline import OfflineConfig, OfflineReasoningGenerator
from forge.quietstar.rewards import ABLATION_THRESHOLD
from forge.quietstar.rl import ThinkIds, heldout_check_items, mean_coherence, save_mixing_head, train_thoughts
from forge.quietstar.synthetic import SyntheticConfig, SyntheticReasoningGenerator
from forge.quietstar.taskworld import TaskWorldReasoningConfig, TaskWorldReasoningGenerator
from forge.quietstar.tokens import STRATEGY_TOKENS, add_thinking_tokens

COHERENCE_REQUIRED = 0.6  # spec: coherence > 0.6
USAGE_REQUIRED = 0.7  # spec: thinking tokens in > 70% of outputs
SPEC_EXAMPLES = 20_000  # spec: the reasoning data holds >= 20,000 examples (fewer is a recorded shortfall)
HELDOUT_PERPLEXITY_CHARS = 20_000  # Phase 1's held-out text measured before Phase 3 and after each step
PERPLEXITY_WINDOW = 128  # tokens per perplexity window (as benchmarks/scripts/quietstar_step1_replay.py)
# The held-out set the criteria read: GSM8K with a data folder (the spec's gsm8k_acc), else the data source's own.
EVAL_SET_ORDER = ("gsm8k", "taskworld", "synthetic")


def choose_input(inputs: dict[str, Path]) -> str:
    """The previous phase's model (``single_input``)."""
    name = single_input(inputs)
    if name is not None:
        return name
    raise ValueError(f"quietstar trains one model; the previous phase wrote {sorted(inputs)}. Run it after "
                     "evomerge (python -m forge.pipeline --phases cognate,evomerge,quietstar)")


def data_source(ctx: PhaseContext) -> str:
    """The configured reasoning data source; ``auto``: offline with a data folder, else the task world."""
    source = ctx.config.quietstar.data_source
    if source == "auto":
        return "offline" if ctx.data_dir else "taskworld"
    return source


def reasoning_examples(ctx: PhaseContext) -> tuple[list, dict[str, Any]]:
    """Train-side examples from the configured source, validated, and where they came from."""
    config = ctx.config.quietstar
    source = data_source(ctx)
    strategies = STRATEGY_TOKENS
    if source == "file":
        if not config.data_file:
            raise ValueError("quietstar.data_source=file needs quietstar.data_file (a dataset written by "
                             "python -m forge.quietstar --output FILE)")
        examples, metadata = read_dataset(Path(config.data_file))
        examples = examples[:config.num_examples]
    elif source == "offline":
        if not ctx.data_dir:
            raise ValueError("quietstar.data_source=offline needs a data folder: set data.data_dir or "
                             "FORGE_DATA_DIR, or use data_source=taskworld")
        generator = OfflineReasoningGenerator(OfflineConfig(data_dir=ctx.data_dir, seed=ctx.config.seed))
        examples, metadata = list(generator.generate(config.num_examples)), {"generator": "offline"}
    elif source == "taskworld":
        generator = TaskWorldReasoningGenerator(TaskWorldReasoningConfig(seed=ctx.config.seed,
                                                                         cells=tuple(config.taskworld_cells)))
        examples, metadata = list(generator.generate(config.num_examples)), {"generator": "taskworld"}
        strategies = generator.strategies
    else:
        generator = SyntheticReasoningGenerator(SyntheticConfig(seed=ctx.config.seed))
        examples, metadata = list(generator.generate(config.num_examples)), {"generator": "synthetic"}
    validate_examples(examples, config.min_examples, strategies).raise_if_failed()
    return examples, {"source": source, **metadata}


def heldout_problems(ctx: PhaseContext) -> dict[str, list[tuple[str, str]]]:
    """(question, answer) sets no step trains on: the held-out side of the generated problems (the task
    world's multi-digit cells; the synthetic word problems when they are the data source), and GSM8K with a
    data folder."""
    config = ctx.config.quietstar
    if data_source(ctx) == "synthetic":
        synthetic = SyntheticReasoningGenerator(SyntheticConfig(heldout=True, seed=ctx.config.seed))
        sets = {"synthetic": [(e.question, e.answer) for e in synthetic.generate(config.eval_problems)]}
    else:
        world = TaskWorldReasoningGenerator(TaskWorldReasoningConfig(heldout=True, seed=ctx.config.seed,
                                                                     cells=tuple(config.taskworld_cells)))
        sets = {"taskworld": [(item.question, item.answer) for item in world.items(config.eval_problems)]}
    if ctx.data_dir:
        from forge.data.splits import heldout_items

        items = heldout_items("gsm8k", ctx.data_dir)[:config.eval_problems]
        sets["gsm8k"] = [(item["question"], str(item["final_answer"])) for item in items]
    return sets


def step2_texts(problems: Sequence[tuple[str, str]]) -> list[str]:
    """(question, answer) problems as Step 2's texts: its training texts, and the held-out ones its anti-theater
    checks cut at a seeded position (``heldout_check_items``)."""
    return [f"Question: {question}\nAnswer: {answer}" for question, answer in problems]


def eval_set(names: Iterable[str]) -> str:
    """The held-out set the criteria read: the first of ``EVAL_SET_ORDER`` among ``names``."""
    names = set(names)
    for name in EVAL_SET_ORDER:
        if name in names:
            return name
    raise ValueError(f"none of the held-out sets {', '.join(EVAL_SET_ORDER)} is among {sorted(names)}")


def measure(model, tokenizer, problems: dict[str, list[tuple[str, str]]], config, *,
            allow_thinking: bool) -> dict[str, Any]:
    """Held-out accuracy per set; with thinking allowed also the share of outputs that open a thinking block
    and ``<set>_accuracy_no_thinking``, the accuracy of the same model with the thinking tokens forbidden
    (its thoughts removed: the answer-level ablation)."""
    model.eval()
    result: dict[str, Any] = {}
    for name, items in problems.items():
        scored = answer_accuracy(model, tokenizer, items, max_new_tokens=config.eval_max_new_tokens,
                                 allow_thinking=allow_thinking)
        result[f"{name}_accuracy"] = scored["accuracy"]
        if allow_thinking:
            result[f"{name}_thinking_usage"] = scored["thinking_usage"]
            result[f"{name}_accuracy_no_thinking"] = answer_accuracy(
                model, tokenizer, items, max_new_tokens=config.eval_max_new_tokens, allow_thinking=False)["accuracy"]
    return result


def commonsense(model, tokenizer, ctx: PhaseContext) -> float | None:
    """Accuracy on the commonsense task (held-out items), or None without a data folder."""
    config = ctx.config.quietstar
    if not ctx.data_dir:
        return None
    from benchmarks.harness import evaluate

    result = evaluate(model, tokenizer, [config.commonsense_task], limit=config.commonsense_limit,
                      heldout_only=True, data_dir=ctx.data_dir)[config.commonsense_task]
    return result.score


def stage_line(figures: dict[str, Any]) -> str:
    """A stage's figures for the console, e.g. ``taskworld accuracy 0.115, heldout perplexity 76.1``."""
    def shown(name: str, value: Any) -> str:
        if value is None:
            return "not measured"
        return f"{value:.1f}" if name.endswith("perplexity") else f"{value:.3f}"
    return ", ".join(f"{name.replace('_', ' ')} {shown(name, value)}" for name, value in figures.items())


def quietstar_criteria(stages: dict[str, dict[str, Any]], coherence: float, format_accuracy: float,
                       format_threshold: float, examples: int) -> dict[str, dict[str, Any]]:
    """The spec's Phase 3 criteria, recorded as measured (the spec asserts them). Accuracy is on the held-out
    set of ``eval_set``: GSM8K with a data folder, else the generated problems of the data source (the task
    world's by default). ``thoughts_ablation`` is the spec's anti-theater ablation (> 0.02) on answers:
    accuracy after Step 2 with thinking minus with the thoughts removed."""
    name = eval_set(key.removesuffix("_accuracy") for key in stages["step2"])
    step2 = stages["step2"]
    return {
        "accuracy_above_phase2": criterion(step2[f"{name}_accuracy"], ">", stages["before"][f"{name}_accuracy"]),
        "coherence": criterion(coherence, ">", COHERENCE_REQUIRED),
        "thinking_usage": criterion(step2[f"{name}_thinking_usage"], ">", USAGE_REQUIRED),
        "thoughts_ablation": criterion(step2[f"{name}_accuracy"] - step2[f"{name}_accuracy_no_thinking"], ">",
                                       ABLATION_THRESHOLD),
        "format_baking_converged": criterion(format_accuracy, ">=", format_threshold),
        "reasoning_examples": criterion(
            examples, ">=", SPEC_EXAMPLES,
            out_of_reach=None if examples >= SPEC_EXAMPLES else
            f"a count set before training: this run's reasoning data held {examples} examples "
            f"(quietstar.num_examples; {SPEC_EXAMPLES:,} in the gtx1660 and cluster presets)"),
    }


def run(ctx: PhaseContext) -> PhaseResult:
    config = ctx.config.quietstar
    started = time.perf_counter()
    name = choose_input(ctx.inputs)
    device = torch.device("cuda" if ctx.config.device != "cpu" and torch.cuda.is_available() else "cpu")
    limit_gpu_memory(str(device), gpu_memory_cap_bytes())  # ray.gpu_memory_gib: the phase has the GPU, up to the cap
    model, tokenizer = load_model_dir(ctx.inputs[name], device=device)
    tracker = ctx.tracker("quietstar", run_config={"quietstar": config.__dict__, "input": name})
    problems = heldout_problems(ctx)
    main_set = eval_set(problems)
    heldout_texts = ctx.read_texts(HELDOUT, HELDOUT_PERPLEXITY_CHARS)

    def heldout_perplexity(model) -> float:
        from benchmarks.lm import perplexity

        return perplexity(model, tokenizer, heldout_texts, max_length=PERPLEXITY_WINDOW)

    stages: dict[str, dict[str, Any]] = {}
    stages["before"] = {**measure(model, tokenizer, problems, config, allow_thinking=False),
                        "commonsense_accuracy": commonsense(model, tokenizer, ctx),
                        "heldout_perplexity": heldout_perplexity(model)}
    print(f"[forge] quietstar: before Phase 3: {stage_line(stages['before'])}", flush=True)

    step1_dir = ctx.work_dir / "step1_model"
    dataset_path = ctx.phase_dir / "reasoning.jsonl"
    if verify_model_dir(step1_dir) and (ctx.work_dir / "step1_report.json").is_file():
        model, tokenizer = load_model_dir(step1_dir, device=device)
        step1_report = read_json(ctx.work_dir / "step1_report.json")
        data_info = read_json(ctx.work_dir / "data_info.json")
    else:
        token_ids = add_thinking_tokens(model, tokenizer)
        examples, data_info = reasoning_examples(ctx)
        write_dataset(examples, dataset_path, extra=data_info)
        data_info = {**data_info, "examples": len(examples), "thinking_token_ids": token_ids,
                     "strategies": dataset_metadata(examples)["strategies"]}
        train, val = select_examples(examples, config.format_bake)
        direct = taskworld.direct_pairs(config.direct_examples, seed=ctx.config.seed)
        data_info["direct_examples"] = len(direct)
        atomic_write_json(ctx.work_dir / "data_info.json", data_info)
        replay = (ctx.read_texts(REPLAY, max_chars=10**12)
                  if config.format_bake.replay_sequences else None)
        with Progress("quietstar: Step 1 format bake", config.format_bake.epochs, "epoch") as progress:
            report = bake_reasoning_format(model, tokenizer, train, val, config.format_bake, replay_texts=replay,
                                           direct=direct,
                                           checkpoint_dir=ctx.work_dir / "step1",
                                           log=progress.following(tracker.log, lambda m, _: m.get("baking/epoch")))
        step1_report = report.to_dict()
        save_model_dir(model, tokenizer, step1_dir, phase="quietstar-step1")
        atomic_write_json(ctx.work_dir / "step1_report.json", step1_report)
    stages["step1"] = {**measure(model, tokenizer, problems, config, allow_thinking=True),
                       "commonsense_accuracy": commonsense(model, tokenizer, ctx),
                       "heldout_perplexity": heldout_perplexity(model)}
    print(f"[forge] quietstar: after Step 1: {stage_line(stages['step1'])}", flush=True)

    examples, _ = read_dataset(dataset_path)
    rl_texts = step2_texts([(e.question, e.answer) for e in examples])
    rl_heldout = step2_texts(problems[main_set])
    with Progress("quietstar: Step 2 RL on thoughts", config.rl.episodes, "episode") as progress:
        rl_report = train_thoughts(model, tokenizer, rl_texts, rl_heldout, config.rl,
                                   reference=load_model_dir(step1_dir, device=device)[0],
                                   checkpoint_dir=ctx.work_dir / "step2",
                                   log=progress.following(tracker.log, lambda m, _: m.get("rl/episode")))
    rl = rl_report.to_dict()
    reference = load_model_dir(step1_dir, device=device)[0]
    coherence = mean_coherence(model, reference, heldout_check_items(tokenizer, rl_heldout, config.rl),
                               ThinkIds.of(tokenizer), config.rl, torch.Generator().manual_seed(ctx.config.seed))
    del reference
    notes = []
    if state_dict_hash(model.state_dict()) == read_manifest(step1_dir)["weights_sha256"]:
        # Step 2 rolled back to Step 1's weights: the same model, measured once.
        stages["step2"] = dict(stages["step1"])
        notes.append(f"Step 2 hands on Step 1's weights: its {len(rl['rollbacks'])} anti-theater checks failed and "
                     "rolled its RL updates back (docs/BENCHMARKS.md: why Quiet-STaR Step 2 rolls back)"
                     if rl["rollbacks"] else "Step 2 left Step 1's weights unchanged")
        print(f"[forge] quietstar: after Step 2: {notes[-1]}; so Step 1's figures", flush=True)
    else:
        stages["step2"] = {**measure(model, tokenizer, problems, config, allow_thinking=True),
                           "commonsense_accuracy": commonsense(model, tokenizer, ctx),
                           "heldout_perplexity": heldout_perplexity(model)}
        print(f"[forge] quietstar: after Step 2: {stage_line(stages['step2'])}", flush=True)
    speed = generation_speed(model, tokenizer, [f"Question: {q}\n" for q, _ in problems[main_set][:config.speed_prompts]],
                             max_new_tokens=config.eval_max_new_tokens)

    out_dir = ctx.phase_dir / "model"
    save_model_dir(model, tokenizer, out_dir, phase="quietstar",
                   extra={"input": name, "data": data_info, "thinking_tokens": data_info["thinking_token_ids"]})
    save_mixing_head(rl_report.mixing_head, ctx.phase_dir / "mixing_head.safetensors")

    criteria = quietstar_criteria(stages, coherence, step1_report["final_accuracy"],
                                  config.format_bake.accuracy_threshold, data_info["examples"])
    tracker.log({f"final/{key}": value for key, value in stages["step2"].items() if value is not None})
    tracker.finish()
    summary = {"input": name, "data": {k: v for k, v in data_info.items() if k != "thinking_token_ids"},
               "eval_set": main_set, "stages": stages,
               "heldout_perplexity_ratio": stages["step2"]["heldout_perplexity"] / stages["before"]["heldout_perplexity"],
               "step1": step1_report, "step2": rl, "generation_speed": speed,
               "criteria": criteria, "criteria_missed": missed(criteria), "notes": notes,
               "wall_time_s": time.perf_counter() - started}
    atomic_write_json(ctx.phase_dir / "quietstar_report.json", json.loads(json.dumps(summary, default=str)))
    return PhaseResult(outputs={"model": out_dir}, summary=summary, texts={REASONING: dataset_path})
