"""Phase 6, tool and persona optimization: alternating A/B cycles until both plateau.

The driver (``forge.abcycles.driver``) decides; this module does the work behind its hooks:

- A-cycle (tool use): variants of the incumbent tool prompt by mutation (``forge.abcycles.prompt_variants``; the
  small models cannot write prompts), scored by the multi-turn tool-use benchmark (``benchmarks.tooluse``)
  on a subset of held-out problems that rotates per iteration. Fitness: the weighted sum of its metrics in
  ``tool_metric_weights`` (accuracy first; tool usage gives the small models a signal). With ``fitness:
  swebench`` it is the resolved rate of the official SWE-bench harness on the data folder's Lite instances,
  as the spec asks (Docker; the config is refused where the harness cannot run). The score is logged and
  handed on under the name of what it measures (``forge.abcycles.driver.A_SCORE_NAMES``). Each prompt's accuracy
  and its paired difference to the incumbent on the iteration's subset, with bootstrap intervals, are kept in
  ``prompts.json`` and the summary (``a_cycle_intervals``); a variant replaces the incumbent only when that
  difference's lower bound is > 0 (``forge.abcycles.driver.PairedScore``). The validation also answers its
  arithmetic items without a call (``direct_accuracy``), so whether the tool pays is on record.
- B-cycle (persona): the model writes self-prompts from the spec's meta-prompt (coherence filter,
  temperature sweep, human-written fallback; ``forge.abcycles.prompt_variants.self_prompts``), scored by the
  weighted benchmark aggregate (the spec's six with a data folder, else ``synthetic_reasoning``); a variant
  replaces the incumbent only when the interval of its paired aggregate difference lies above 0, as in A.
- Every prompt of an iteration is evaluated at the same time on ``eval_actors`` remote
  ``BenchmarkActor``s that hold the current weights (sent in memory, once per model change); their result
  cache makes a repeated prompt free.
- Winners are half-baked (LoRA prompt baking, ``forge.baking``; in target mode the bake closes half the prompt's
  KL gap), lock-in full-bakes; each bake's prompt KL per token, strength and target are kept in ``prompts.json``.
  Every bake retains the direct answers (``bake_retain_items``): train-side task-world problems asked the way the
  scoreboard asks its held-out ones, each with its gold answer line, on which the student is held to the unbaked
  model (``baking.retention_weight``); unheld, the phase's bakes took the scoreboard's task accuracy from 0.456
  to 0.067. They also retain tool use (``bake_retain_tool_items``): train-side tool transcripts in the A-cycle's
  format, whose calls copy the question and whose answers copy the result.
- The held-out validation is recorded before and after, and the spec's cycle gains are measured on it: the same
  items for the input with the initial prompts and the model handed on with its prompts (``validation_gains``).
  The optimized model with the final prompts is handed on
  (when the time budget stops the cycles, the best iteration's by that validation: the spec's cost cap). Whether
  the input goes on instead is the scoreboard gate's call (``forge.phases.scoring``), as for every phase.

Records: ``prompts.json`` and ``work/iter_NNN/`` (the model after each iteration), ``trajectory.json``,
``trajectory.png``, the final model in ``model/`` with the Phase 7 handoff in its manifest. The A-cycle's
validation problems are disjoint from every iteration's subset; the B-cycle's validation items are drawn
with another seed from the same held-out pool (the harness selects by seed), so they may overlap.
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import ray

from actors.benchmark_actor import BenchmarkActor, WeightsRef, evaluate_prompts
from actors.restarts import ATTEMPTS_FILE, lost_error, restart_options
from benchmarks.harness import TASK_WEIGHTS, aggregate_score, evaluate, item_scores
from benchmarks.scoreboard import paired_intervals
from benchmarks.swebench import generate_predictions, run_harness, write_predictions
from benchmarks.tooluse import (INITIAL_TOOL_PROMPT, ToolUseConfig, accuracy_intervals, evaluate_direct,
                                evaluate_tool_use, item_metrics, training_examples)
from benchmarks.tooluse_problems import load_problems, rotation_subset
from cluster.resources import evaluation_share
from forge.abcycles.driver import (ABResult, ABStateMismatchError, IterationRecord, PairedScore, relative_gain,
                                   last_checkpoint_iteration, plot_trajectory, run_ab_cycles, spec_strength)
from forge.artifacts import (atomic_write_json, load_model_dir, model_dir_problems, nonfinite_tensors, read_json,
                             save_model_dir, state_dict_hash)
from forge.console import Progress
from forge.baking import NothingToBake, bake_prompt
from forge.baking.trajectories import Trajectory
from forge.criteria import criterion, missed
from forge.curriculum.levels import retained_sequences
from forge.data import taskworld
from forge.data.readers import read_swebench
from forge.modelinfo import max_positions
from forge.phases.base import PhaseContext, PhaseResult, single_input
from forge.tracking import Tracker
from forge.abcycles.prompt_variants import HUMAN_PERSONAS, META_PROMPT, mutate_prompt, self_prompts

OFFLINE_PERSONA_TASKS = {"synthetic_reasoning": 1.0}
A_GAIN_REQUIRED = 0.10  # spec: SWE-Bench score improves by >= 10% from baseline
B_GAIN_REQUIRED = 0.05  # spec: aggregate benchmark score improves by >= 5% from baseline
STRENGTH_REQUIRED = 0.95  # spec: half-baking converges to >= 95% strength


def validation_total(scores: dict[str, float]) -> float:
    """One held-out figure for both cycles: the A-cycle's tool fitness plus the B-cycle's aggregate."""
    return scores["tool_fitness"] + scores["persona_aggregate"]


def tool_fitness(metrics: dict[str, float], weights: dict[str, float]) -> float:
    """The A-cycle's fitness: the weighted sum of tool-use metrics."""
    return sum(weight * metrics[name] for name, weight in weights.items())


def item_tool_fitness(records: Sequence[dict[str, Any]], weights: dict[str, float]) -> list[float] | None:
    """Per item, its share of the A-cycle's fitness (their mean is :func:`tool_fitness` of the items' metrics), or
    None when a weighted metric is not a mean over items (e.g. a call count)."""
    per_item = [item_metrics(record) for record in records]
    if not per_item or any(name not in per_item[0] for name in weights):
        return None
    return [sum(weight * item[name] for name, weight in weights.items()) for item in per_item]


def validation_change_interval(before: dict[str, list[float]], after: dict[str, list[float]],
                               persona_tasks: dict[str, float], seed: int) -> list[float] | None:
    """The paired 95% bootstrap interval of the change of :func:`validation_total` from ``before`` to ``after``
    (per-item values of the same items: ``tool_fitness`` and each persona task's), the tool items and each task's
    items resampled apart; None without per-item tool figures (SWE-bench, or a weighted call count)."""
    if before.get("tool_fitness") is None or after.get("tool_fitness") is None:
        return None
    names = ["tool_fitness", *persona_tasks]
    persona_weight = sum(persona_tasks.values())
    # The tool term counts once and the persona tasks' normalised weights sum to one: paired_intervals' weighted
    # mean of these is half the total, so its difference is doubled.
    weights = [1.0, *(weight / persona_weight for weight in persona_tasks.values())]
    entry = paired_intervals([[before[name], after[name]] for name in names], weights, seed=seed)[1]
    return [2 * bound for bound in entry["difference_interval"]]


def validation_gain_intervals(before: dict[str, list[float]], after: dict[str, list[float]],
                              persona_tasks: dict[str, float], seed: int) -> dict[str, list[float] | None]:
    """The paired 95% bootstrap intervals of :func:`validation_gains` (per-item values of the same items, as
    :func:`validation_change_interval`): A over the tool items, B over each persona task's items resampled apart and
    weighted as the aggregate; A is None without per-item tool figures."""
    def interval(names: list[str], weights: list[float]) -> list[float]:
        return paired_intervals([[before[name], after[name]] for name in names], weights, seed=seed,
                                gain=relative_gain)[1]["gain_interval"]

    tool_items = before.get("tool_fitness") is not None and after.get("tool_fitness") is not None
    return {"A": interval(["tool_fitness"], [1.0]) if tool_items else None,
            "B": interval(list(persona_tasks), list(persona_tasks.values()))}


def validation_gains(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Each cycle's gain on the held-out validation, the same items before and after: the A-cycle's tool fitness
    and the B-cycle's aggregate of the model handed on with its prompts, against the input with the initial ones.
    (The driver's ``final/total_improvement_*`` compares the last incumbent on the last rotating subset with the
    first on the first: other items, so subset difficulty counts as gain or loss.)"""
    return {"A": relative_gain(after["tool_fitness"], before["tool_fitness"]),
            "B": relative_gain(after["persona_aggregate"], before["persona_aggregate"])}


def tool_persona_criteria(converged: bool, a_gain: float | None, b_gain: float | None, strength: float,
                          heldout_change: float, heldout_interval: Sequence[float] | None = None,
                          gain_intervals: dict[str, list[float] | None] | None = None) -> dict[str, dict[str, Any]]:
    """The spec's Phase 6 minimum success, recorded as measured: both cycles converge, the A-cycle's score
    gains >= 10% and the B-cycle's aggregate >= 5% (``validation_gains``), and the half-baking strength
    (one counter over both cycles' half-bakes, S_N = 1 - 0.5^N) reaches >= 95%; and (issue 19) the model handed
    on scores at least the input on the held-out validation (``heldout_change``: the change of its total, with its
    paired interval where measured). ``gain_intervals``: the gains' paired intervals
    (:func:`validation_gain_intervals`)."""
    intervals = gain_intervals or {}
    return {"converged": criterion(1.0 if converged else 0.0, ">=", 1.0),
            "a_cycle_improvement": criterion(a_gain, ">=", A_GAIN_REQUIRED,
                                             intervals.get("A") if a_gain is not None else None),
            "b_cycle_improvement": criterion(b_gain, ">=", B_GAIN_REQUIRED,
                                             intervals.get("B") if b_gain is not None else None),
            "baking_strength": criterion(strength, ">=", STRENGTH_REQUIRED),
            "heldout_not_worse_than_input": criterion(heldout_change, ">=", 0.0, heldout_interval)}


def self_prompt_counts(history: Sequence[IterationRecord]) -> dict[str, int]:
    """The B-cycle's proposals by origin: written by the model (passed the coherence filter) or human fallbacks."""
    origins = [proposal["origin"] for record in history if record.cycle == "B" for proposal in record.proposals]
    return {"proposed": len(origins), "model_written": sum(origin.startswith("self:") for origin in origins),
            "fallback": sum(origin.startswith("fallback:") for origin in origins)}


def bake_questions(sources: Sequence[str], count: int, data_dir: str | None) -> list[str]:
    """What follows the prompt in a bake's trajectories: train-side questions of the tool sources, ``count`` each."""
    return [f"Question: {p.question}\n" for p in load_problems(sources, heldout=False, data_dir=data_dir, limit=count)]


def retained_direct_answers(tokenizer, problems: Sequence[taskworld.TaskItem], max_len: int | None) -> list[Trajectory]:
    """The problems asked directly (``Question: ...``) with their gold answer lines, the sequences every bake holds.
    Gold, not the model's greedy answers: on the problems the model answers right (the ones the scoreboard counts)
    the two are the same tokens, and the gold ones need no generation pass and do not depend on the model."""
    return retained_sequences(tokenizer, [taskworld.direct_pair(item) for item in problems], max_len)


def retained_tool_transcripts(tokenizer, sources: Sequence[str], config, data_dir: str | None,
                               max_len: int | None, seed: int) -> list[Trajectory]:
    """``config.bake_retain_tool_items`` train-side tool-use transcripts per source, in the context the A-cycle
    scores (the initial tool prompt, the protocol, ``tool_fewshot`` worked examples), gold like the direct answers."""
    if config.bake_retain_tool_items == 0:
        return []
    tool = ToolUseConfig(num_fewshot=config.tool_fewshot, num_samples=0, seed=seed)
    pairs = training_examples(sources, tool, INITIAL_TOOL_PROMPT, data_dir, limit=config.bake_retain_tool_items)
    return retained_sequences(tokenizer, pairs, max_len)


def bake_retention(tokenizer, config, sources: Sequence[str], data_dir: str | None, max_len: int | None,
                   seed: int) -> list[Trajectory]:
    """What every bake of the phase holds: ``config.bake_retain_items`` train-side direct problems (none of them one
    the scoreboard measures) and the tool transcripts of ``retained_tool_transcripts``."""
    direct = retained_direct_answers(tokenizer, taskworld.easy_train_items(config.bake_retain_items, seed=seed), max_len)
    return direct + retained_tool_transcripts(tokenizer, sources, config, data_dir, max_len, seed)


def choose_input(inputs: dict[str, Path]) -> str:
    """The previous phase's model (``single_input``)."""
    name = single_input(inputs)
    if name is not None:
        return name
    raise ValueError(f"tool_persona optimizes one model; the previous phase wrote {sorted(inputs)}")


class ToolPersonaWork:
    """The A/B hooks: proposals, parallel evaluation on actors, baking, checkpoints."""

    def __init__(self, ctx: PhaseContext, model, tokenizer, actors: Sequence, *, tool_pool, tool_validation,
                 persona_tasks: dict[str, float], bake_inputs: list[str], retain: Sequence[Trajectory],
                 tracker: Tracker):
        self.ctx, self.config, self.tracker = ctx, ctx.config.tool_persona, tracker
        self.model, self.tokenizer, self.actors = model, tokenizer, list(actors)
        self.tool_pool, self.tool_validation = tool_pool, tool_validation
        self.persona_tasks, self.bake_inputs, self.retain = persona_tasks, bake_inputs, list(retain)
        self.tool_config = ToolUseConfig(max_turns=self.config.tool_max_turns,
                                         max_new_tokens=self.config.tool_max_new_tokens,
                                         num_fewshot=self.config.tool_fewshot, num_samples=0)
        self.actor_weights: tuple[str, WeightsRef] | None = None  # the hash and reference of the weights sent
        self.cycles: dict[int, str] = {}
        self.proposal_logs: dict[int, dict] = {}
        self.prompts: dict[str, Any] = read_json(self.prompts_path) if self.prompts_path.is_file() else {}

    @property
    def prompts_path(self) -> Path:
        return self.ctx.phase_dir / "prompts.json"

    # ------------------------------------------------------------------ hooks
    def propose(self, cycle: str, incumbent: str, iteration: int, n: int):
        seed = self.ctx.config.seed + iteration
        if cycle == "A":
            return mutate_prompt(incumbent, n, seed)
        proposals, log = self_prompts(self.model, self.tokenizer, META_PROMPT, n=n, seed=seed,
                                      max_new_tokens=self.config.self_prompt_max_new_tokens, fallback=HUMAN_PERSONAS)
        self.proposal_logs[iteration] = log
        return proposals

    def _current_weights(self) -> dict[str, Any]:
        """The model's weights for the actors: put in the object store once per change; each actor loads them
        on its next evaluation (again after a restart)."""
        weights = state_dict_hash(self.model.state_dict())
        if self.actor_weights is None or self.actor_weights[0] != weights:
            ref = ray.put({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
            self.actor_weights = (weights, WeightsRef(ref, weights))
        return {"weights_hash": weights, "weights": self.actor_weights[1]}

    def evaluate(self, cycle: str, prompts: list[str], iteration: int) -> list[float | PairedScore]:
        self.cycles[iteration] = cycle
        if cycle == "A" and self.config.fitness == "swebench":
            # The official harness scores patches in Docker, one run per prompt, from this process.
            scores = [self.swebench_resolved(self.model, prompt, f"iter{iteration:03d}-p{i}")
                      for i, prompt in enumerate(prompts)]
            self.prompts.setdefault(str(iteration), {})["scored"] = [
                {"prompt": prompt, "score": score} for prompt, score in zip(prompts, scores)]
            return scores
        weights = self._current_weights()
        try:
            if cycle == "A":
                problems = rotation_subset(self.tool_pool, iteration, self.config.tool_items,
                                           seed=self.ctx.config.seed)
                results = evaluate_prompts(self.actors, prompts, method="evaluate_tool_use", problems=problems,
                                           config=self.tool_config, data_dir=self.ctx.data_dir, **weights)
                scores = [self.tool_fitness(result["metrics"]) for result in results]
                intervals = accuracy_intervals([[record["correct"] for record in result["records"]]
                                                for result in results], seed=self.ctx.config.seed + iteration)
            else:
                results = evaluate_prompts(self.actors, prompts, method="evaluate", tasks=list(self.persona_tasks),
                                           limit=self.config.persona_items, seed=1000 + iteration,
                                           heldout_only=True, max_new_tokens=self.config.persona_max_new_tokens,
                                           log_samples=True, **weights)
                scores = [aggregate_score(result, self.persona_tasks) for result in results]
                per_task = [[item_scores(task, result[task]) for result in results] for task in self.persona_tasks]
                intervals = [{"aggregate": entry.pop("value"), **entry} for entry in paired_intervals(
                    per_task, list(self.persona_tasks.values()), seed=self.ctx.config.seed + iteration)]
        except ray.exceptions.RayActorError as err:
            raise lost_error(f"tool_persona benchmark actor (iteration {iteration}, cycle {cycle})",
                             self.ctx.work_dir / ATTEMPTS_FILE, self.ctx.config.ray.max_restarts, err) from err
        scored = [{"prompt": prompt, "score": score, **interval}
                  for prompt, score, interval in zip(prompts, scores, intervals)]
        self.prompts.setdefault(str(iteration), {})["scored"] = scored
        # A variant replaces the incumbent only when it is better beyond noise (the driver reads the lower bound of
        # the paired difference): in A its accuracy (more calls alone do not make a better tool prompt), in B the
        # benchmark aggregate (a persona that wins on 3 of 16 items is not half-baked).
        return [PairedScore(score, interval["difference_interval"][0]) for score, interval in zip(scores, intervals)]

    def tool_fitness(self, metrics: dict[str, float]) -> float:
        return tool_fitness(metrics, self.config.tool_metric_weights)

    def swebench_resolved(self, model, prompt: str, run_id: str) -> float:
        """SWE-bench's resolved rate of ``model`` with ``prompt`` before each Lite instance (official harness)."""
        instances = read_swebench(self.ctx.data_dir, subset="lite")
        predictions = generate_predictions(model, self.tokenizer, instances, system_prompt=prompt)
        path = write_predictions(predictions, "forge-tool_persona", self.ctx.work_dir / "swebench" / f"{run_id}.jsonl")
        return run_harness(path, run_id=run_id)["resolved_rate"]

    def _bake(self, prompt: str, strength: str) -> float:
        """Bake ``prompt``; its measured strength. A prompt that changes nothing in the model's predictions is
        not baked: the model stays as it is, the prompt is recorded under ``not_baked`` and its strength is 0."""
        try:
            result = bake_prompt(self.model, self.tokenizer, prompt, self.bake_inputs,
                                 self.config.baking.at_strength(strength), retain=self.retain)
        except NothingToBake as err:
            print(f"[forge] tool_persona: {strength}-bake skipped: {err}", flush=True)
            self.prompts.setdefault("not_baked", []).append({"prompt": prompt, "strength": strength, "kl": err.kl})
            return 0.0
        self.prompts.setdefault("bakes", []).append({
            "prompt": prompt, "strength": strength, "kl_per_token": result.kl_reference,
            "measured_strength": result.strength, "calibration_strength": result.calibration_strength,
            "target_reached": result.target_reached,
            "lora_scale": result.lora_scale, "retained_sequences": len(self.retain),
            "retain_loss_last_epoch": result.history[-1].retain_loss})
        print(f"[forge] tool_persona: {strength}-bake: held-out {result.describe_strength()}", flush=True)
        self.model = result.merge().eval()
        return result.strength

    def half_bake(self, cycle: str, prompt: str, iteration: int) -> float:
        return self._bake(prompt, "half")

    def full_bake(self, cycle: str, prompt: str, iteration: int) -> float:
        return self._bake(prompt, "full")

    def checkpoint(self, iteration: int) -> None:
        model_dir = save_model_dir(self.model, self.tokenizer, self.ctx.work_dir / f"iter_{iteration:03d}",
                                   phase="tool_persona-iteration", extra={"iteration": iteration})
        if iteration in self.proposal_logs:
            self.prompts.setdefault(str(iteration), {})["self_prompts"] = self.proposal_logs.pop(iteration)
        atomic_write_json(self.prompts_path, self.prompts)
        # The spec's artifacts: the model and the prompts after each iteration.
        scores = [entry["score"] for entry in self.prompts.get(str(iteration), {}).get("scored", [])]
        metadata = {"iteration": iteration, "cycle": self.cycles.get(iteration),
                    "incumbent_score": scores[0] if scores else None,
                    "best_variant_score": max(scores[1:]) if scores[1:] else None}
        self.tracker.log_artifact(f"phase6-model-iter-{iteration}", "model", model_dir, metadata)
        self.tracker.log_artifact(f"phase6-prompts-iter-{iteration}", "prompts", self.prompts_path,
                                  {"iteration": iteration, "cycle": self.cycles.get(iteration)})

    # ------------------------------------------------------------------ final check
    def validation_scores(self, model, prompts: dict[str, str]) -> tuple[dict[str, float], dict[str, Any]]:
        """The held-out validation set, in-process: tool use (or SWE-bench) with the A prompt, the aggregate
        with the B one; and the per-item values behind them (``tool_fitness``, None for SWE-bench, and each
        persona task's), for :func:`validation_change_interval`."""
        persona = evaluate(model, self.tokenizer, list(self.persona_tasks), prompt=prompts["B"],
                           limit=self.config.validation_items, seed=0, heldout_only=True, log_samples=True,
                           max_new_tokens=self.config.persona_max_new_tokens, data_dir=self.ctx.data_dir)
        persona_aggregate = aggregate_score(persona, self.persona_tasks)
        items: dict[str, Any] = {task: item_scores(task, persona[task]) for task in self.persona_tasks}
        if self.config.fitness == "swebench":
            run_id = f"validation-{state_dict_hash(model.state_dict())[:12]}"
            resolved = self.swebench_resolved(model, prompts["A"], run_id)
            return ({"tool_fitness": resolved, "swe_bench_resolved_rate": resolved,
                     "persona_aggregate": persona_aggregate}, {**items, "tool_fitness": None})
        tool = evaluate_tool_use(model, self.tokenizer, prompt=prompts["A"], problems=self.tool_validation,
                                 config=self.tool_config, data_dir=self.ctx.data_dir)
        items["tool_fitness"] = item_tool_fitness(tool.records, self.config.tool_metric_weights)
        scores = {"tool_fitness": self.tool_fitness(tool.metrics), "tool_accuracy": tool.metrics["accuracy"],
                  "tool_usage_rate": tool.metrics["tool_usage_rate"], "persona_aggregate": persona_aggregate}
        arithmetic = [problem for problem in self.tool_validation if problem.kind == "arithmetic"]
        if arithmetic:
            # Whether the tool pays: the same items answered at once, without a call.
            direct = evaluate_direct(model, self.tokenizer, prompt=prompts["A"], problems=arithmetic,
                                     config=self.tool_config, data_dir=self.ctx.data_dir)
            scores["direct_accuracy"] = direct.metrics["accuracy"]
        return scores, items


def resume_iteration(ctx: PhaseContext, state_path: Path) -> int | None:
    """The iteration whose checkpoint the A/B cycles resume after, or None to start from the input. An unreadable
    state file or an unusable last checkpoint (altered, truncated, non-finite weights) restarts the cycles, with
    a message: the state records only the last iteration, so there is no earlier one to fall back to."""
    if not state_path.is_file():
        return None
    try:
        last = last_checkpoint_iteration(state_path)
        checkpoint = ctx.work_dir / f"iter_{last:03d}" if last is not None else None
        problems = model_dir_problems(checkpoint) if checkpoint else []
        if checkpoint and not problems:
            weights = load_model_dir(checkpoint)[0].state_dict()
            problems = [f"non-finite weights in {name}" for name in nonfinite_tensors(weights)]
    except ABStateMismatchError as err:
        problems = [str(err)]
    if not problems:
        return last
    print(f"[forge] tool_persona: cannot resume the A/B cycles ({'; '.join(problems[:2])}); restarting them from "
          "the phase's input", flush=True)
    for path in [state_path, ctx.phase_dir / "prompts.json", *ctx.work_dir.glob("iter_*")]:
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    return None


def run(ctx: PhaseContext) -> PhaseResult:
    config = ctx.config.tool_persona
    started = time.perf_counter()
    name = choose_input(ctx.inputs)
    input_model, tokenizer = load_model_dir(ctx.inputs[name])
    state_path = ctx.work_dir / "ab_state.json"
    last = resume_iteration(ctx, state_path)
    model = load_model_dir(ctx.work_dir / f"iter_{last:03d}")[0] if last is not None else load_model_dir(ctx.inputs[name])[0]

    sources = config.sources(ctx.data_dir is not None)
    heldout = load_problems(sources, heldout=True, data_dir=ctx.data_dir, seed=ctx.config.seed)
    tool_validation, tool_pool = heldout[:config.validation_items], heldout[config.validation_items:]
    if len(tool_pool) < config.tool_items:
        raise ValueError(f"only {len(tool_pool)} held-out tool problems are left for selection after "
                         f"{config.validation_items} validation items; lower tool_persona.validation_items")
    persona_tasks = dict(TASK_WEIGHTS) if ctx.data_dir else dict(OFFLINE_PERSONA_TASKS)
    bake_inputs = bake_questions(sources, config.bake_inputs, ctx.data_dir)
    retain = bake_retention(tokenizer, config, sources, ctx.data_dir, max_positions(model), ctx.config.seed)
    share = evaluation_share(model.state_dict(), ctx.config.device, config.eval_actors)
    # A benchmark actor whose process dies is restarted and its evaluation re-sent (ray.max_restarts).
    actors = [BenchmarkActor.options(**share.ray_options(), **restart_options(ctx.config.ray.max_restarts)).remote(
        str(ctx.inputs[name]), device=share.device, gpu_memory_bytes=share.gpu_memory_bytes, data_dir=ctx.data_dir,
        cache_dir=str(ctx.work_dir / "cache"), attempts_file=str(ctx.work_dir / ATTEMPTS_FILE))
        for _ in range(config.eval_actors)]
    tracker = ctx.tracker("tool_persona", run_config={"tool_persona": dataclasses.asdict(config), "input": name})
    work = ToolPersonaWork(ctx, model, tokenizer, actors, tool_pool=tool_pool, tool_validation=tool_validation,
                           persona_tasks=persona_tasks, bake_inputs=bake_inputs, retain=retain, tracker=tracker)
    initial = {"A": INITIAL_TOOL_PROMPT, "B": config.initial_persona}
    progress = Progress("tool_persona: A/B iterations", config.cycles.max_iterations, "iteration",
                        done=0 if last is None else last + 1)

    def iterations_done(metrics: dict[str, Any], _: int | None) -> int | None:
        iteration = metrics.get("a_cycle/iteration", metrics.get("b_cycle/iteration"))
        return None if iteration is None else iteration + 1

    try:
        result: ABResult = run_ab_cycles(work, config.cycles, initial_prompts=initial, state_path=state_path,
                                         log=progress.following(tracker.log, iterations_done),
                                         a_fitness=config.fitness,
                                         say=lambda line: print(f"[forge] tool_persona: {line}", flush=True))
    finally:
        progress.close()
        for actor in actors:
            ray.kill(actor)

    final_prompts = result.incumbents
    print(f"[forge] tool_persona: the A/B cycles stopped ({result.stop_reason}) after {len(result.history)} "
          f"iterations; tool prompt: {final_prompts['A']!r}; persona: {final_prompts['B']!r}", flush=True)
    before, before_items = work.validation_scores(input_model, initial)
    after, after_items = work.validation_scores(work.model, final_prompts)
    tracker.log({**{f"final/{k}": v for k, v in after.items()}, **{f"final/input_{k}": v for k, v in before.items()}})
    tracker.finish()
    plot_trajectory(result, ctx.phase_dir / "trajectory.png")
    atomic_write_json(ctx.phase_dir / "trajectory.json", result.to_dict())
    # When the time budget stopped the cycles, the held-out check picks the best iteration's model; the input
    # competes at the scoreboard gate, like every phase's.
    final_iteration = last_checkpoint_iteration(state_path)
    candidates = {"optimized": (work.model, final_prompts, (after, after_items))}
    if result.stop_reason == "budget":
        # The spec's cost cap keeps the best model so far: every earlier iteration's model competes too.
        for record in result.history[:-1]:
            checkpoint_model = load_model_dir(ctx.work_dir / f"iter_{record.iteration:03d}")[0]
            prompts = result.prompts_after(record.iteration)
            candidates[f"iter_{record.iteration:03d}"] = (checkpoint_model, prompts,
                                                          work.validation_scores(checkpoint_model, prompts))
    totals = {key: validation_total(scores) for key, (_, _, (scores, _)) in candidates.items()}
    handed_on = max(totals, key=totals.get)  # the optimized model on ties (it comes first)
    model_out, prompts_out, (scores_out, items_out) = candidates[handed_on]
    change_interval = validation_change_interval(before_items, items_out, persona_tasks, seed=ctx.config.seed)
    # A cycle that never ran has no gain to report (a bake of the other cycle's prompt may still move its score).
    gains = {cycle: gain if result.iterations[cycle] else None
             for cycle, gain in validation_gains(before, scores_out).items()}
    handoff = {**result.handoff(), "validation_before": before, "validation_after": after,
               "validation_totals": totals, "persona_fitness_tasks": persona_tasks, "handed_on": handed_on,
               "handed_on_prompts": prompts_out, "optimized_model_dir": None if final_iteration is None
               else str(ctx.work_dir / f"iter_{final_iteration:03d}")}
    if handed_on != "optimized":
        print(f"[forge] tool_persona: {handed_on} scores highest on the held-out validation ({totals}); "
              f"handing it on with its prompts", flush=True)
    out_dir = ctx.phase_dir / "model"
    save_model_dir(model_out, tokenizer, out_dir, phase="tool_persona", extra={"input": name, "handoff": handoff})
    criteria = tool_persona_criteria(result.converged, gains["A"], gains["B"],
                                     spec_strength(sum(result.half_bakes.values())),
                                     totals[handed_on] - validation_total(before), change_interval,
                                     validation_gain_intervals(before_items, items_out, persona_tasks,
                                                               seed=ctx.config.seed))
    # Each A iteration's prompts on its subset: accuracy and paired difference to the incumbent, with intervals.
    a_intervals = {key: entry["scored"] for key, entry in work.prompts.items()
                   if key.isdigit() and work.cycles.get(int(key)) == "A" and "scored" in entry}
    summary = {"input": name, "stop_reason": result.stop_reason, "iterations": len(result.history),
               "a_cycle_fitness": config.fitness, "criteria": criteria, "criteria_missed": missed(criteria),
               "tool_items_per_variant": config.tool_items, "a_cycle_intervals": a_intervals,
               "retained_sequences": len(retain),
               "self_prompts": self_prompt_counts(result.history),
               "handed_on": handed_on, "validation_totals": totals, "final_prompts": final_prompts,
               "handed_on_prompts": prompts_out,
               "validation_before": before, "validation_after": after, "validation_gains": gains,
               "persona_fitness_tasks": persona_tasks, "eval_actors": config.eval_actors,
               "wall_time_s": time.perf_counter() - started}
    return PhaseResult(outputs={"model": out_dir}, summary=summary)
