"""Tool-use benchmark (Phase 6 A-cycle fitness): multi-turn problems solved by calling tools.

Every item's context is the system/tool prompt under test, the tool protocol, worked examples from
the train side, then the question. The loop, per turn: generate until a call or the answer closes
(stop sequences, ``benchmarks.lm.generate_until`` with its KV cache), run the call (calculator, or
Python in ``benchmarks.sandbox``), append ``<result>...</result>`` as the tool's turn, continue;
a run ends at ``<answer>``, at a turn without a call, or after ``max_turns`` model turns.

Metrics (spec 000's A-cycle names): ``accuracy``, ``avg_turns``, ``tool_usage_rate`` (share of items
with at least one well-formed call) from one greedy run per item; ``pass@1`` / ``pass@10`` (unbiased,
Chen et al.) from ``num_samples`` sampled runs per item; ``calls/<tool>`` and ``errors/<tool>``.

``evaluate_tool_use(model, tokenizer, prompt=INITIAL_TOOL_PROMPT, problems=load_problems(["easy"]))``.
``evaluate_direct`` is the baseline a tool has to beat: the same contexts, each arithmetic item answered at
once (worked examples that answer directly, the answer tag already opened), so no call can be made.
"""
from __future__ import annotations

import random
import textwrap
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from forge.artifacts import state_dict_hash
from forge.data.tool_syntax import answer_text

from benchmarks import scoring
from benchmarks.cache import ResultCache, cache_key
from benchmarks.harness import docs_digest, tokenizer_fingerprint
from benchmarks.lm import encode, generate_until, probe_model
from benchmarks.sandbox import SandboxLimits, run_programs
from benchmarks.scoreboard import paired_intervals
from benchmarks.tooluse_problems import SOURCES, ToolProblem, demonstrations, load_problems, rotation_subset
from benchmarks.tooluse_tools import (ANSWER_CLOSE, ANSWER_OPEN, CLOSE_TAGS, RESULT_CLOSE, RESULT_OPEN,
                                      STOP_SEQUENCES, TOOLS, ToolCall, calculate, find_call, python_program, run_calls)

__all__ = ["INITIAL_TOOL_PROMPT", "SOURCES", "TOOL_PROMPT_VARIANTS", "Episode", "ToolProblem", "ToolUseConfig",
           "ToolUseResult", "accuracy_intervals", "advance", "build_context", "calculate", "draw_shots",
           "evaluate_direct", "evaluate_tool_use", "load_problems", "rotation_subset", "score_answers",
           "tool_use_metrics", "training_examples"]

# Spec 000, A-cycle: the initial tool prompt and its first four variants.
INITIAL_TOOL_PROMPT = ("When solving coding problems, think step by step and use available tools to validate "
                       "your reasoning.")
TOOL_PROMPT_VARIANTS = (
    "Always use tools before answering coding questions",
    "Break problems into tool-solvable steps, chain tools",
    "Use tools to verify reasoning and test assumptions",
    "When stuck, try different tool combinations systematically",
)

# How to call the tools; it follows the prompt under test in every context.
TOOL_PROTOCOL = ("Tools: write <calc>expression</calc> to evaluate arithmetic or <python>code</python> to run "
                 "Python (for a coding task, its tests run after your code). Each call is answered with "
                 "<result>output</result>. Finish with <answer>final answer</answer>: a number, or for a "
                 "coding task the code of the function.")

PASS_AT_K = (1, 10)
TASK_NAME = "tooluse"  # the task part of the result cache key


@dataclass(frozen=True)
class ToolUseConfig:
    """Settings of one tool-use evaluation."""

    max_turns: int = 6  # model turns per run (a call and its result are one turn); the answer ends it sooner
    max_new_tokens: int = 192  # generation budget of one model turn
    num_fewshot: int = 2  # worked transcripts (train side, same source) before each item
    num_samples: int = 10  # sampled runs per item for pass@k; 0: only the greedy run
    temperature: float = 0.8  # temperature of the sampled runs (the accuracy run is greedy)
    seed: int = 1234  # few-shot draws and sampling
    batch_size: int = 16  # generation batch size
    sandbox: SandboxLimits = SandboxLimits(timeout_s=5.0)  # limits of each python call and answer check

    def __post_init__(self) -> None:
        if self.max_turns < 1 or self.max_new_tokens < 1:
            raise ValueError(f"max_turns and max_new_tokens must be >= 1, got {self.max_turns}, "
                             f"{self.max_new_tokens}")
        if self.num_samples < 0 or self.num_fewshot < 0:
            raise ValueError(f"num_samples and num_fewshot must be >= 0, got {self.num_samples}, "
                             f"{self.num_fewshot}")
        if self.num_samples > 0 and self.temperature <= 0:
            raise ValueError(f"sampled runs need temperature > 0, got {self.temperature}: set num_samples=0 "
                             "for greedy-only evaluation")


@dataclass
class Episode:
    """One run of the loop on one problem: the growing context and what happened in it."""

    problem: ToolProblem  # the item
    context: str  # the model's next input
    sample: int = -1  # -1: the greedy run; else the index of a sampled run
    transcript: str = ""  # model and tool turns after the question
    turns: int = 0  # model turns taken
    calls: list[ToolCall] = field(default_factory=list)  # every call, in order
    answer: str | None = None  # the final answer's text; None when none was given
    stopped: str = ""  # why the run ended: answer, no_call, out_of_tokens, max_turns ("" while running)
    correct: bool = False  # the final answer was right (set by score_answers)

    def record(self) -> dict[str, Any]:
        return {"id": self.problem.id, "source": self.problem.source, "kind": self.problem.kind,
                "correct": self.correct, "turns": self.turns, "stopped": self.stopped, "answer": self.answer,
                "calls": [call.to_dict() for call in self.calls], "transcript": self.transcript}


def build_context(prompt: str, problem: ToolProblem, shots: Sequence[tuple[ToolProblem, str]] = ()) -> str:
    """Prompt under test, tool protocol, worked ``(problem, transcript)`` examples, then the question."""
    header = f"{prompt.strip()}\n\n" if prompt.strip() else ""
    examples = "".join(f"Question: {shot.question}\n{transcript}\n\n" for shot, transcript in shots)
    return f"{header}{TOOL_PROTOCOL}\n\n{examples}Question: {problem.question}\n"


def advance(episodes: Sequence[Episode], completions: Sequence[str], exhausted: Sequence[bool], *,
            max_turns: int, limits: SandboxLimits) -> None:
    """Apply one model turn to each running episode: record its answer, or run its call and append the
    tool's result turn, or end it. ``exhausted``: the turn used its whole token budget (a call it left
    open is then malformed, and the run ends)."""
    pending = []
    for episode, text, out_of_tokens in zip(episodes, completions, exhausted, strict=True):
        episode.turns += 1
        _, opened, rest = find_call(text)
        if opened == "answer":
            episode.answer = rest.strip()
            episode.transcript += text + ANSWER_CLOSE
            episode.stopped = "answer"
            continue
        if opened is None:
            episode.transcript += text
            episode.stopped = "out_of_tokens" if out_of_tokens else "no_call"
            continue
        argument = textwrap.dedent(rest).strip("\n") if opened == "python" else rest.strip()
        call = ToolCall(tool=opened, argument=argument)
        episode.calls.append(call)
        problem = episode.problem
        pending.append((episode, text, out_of_tokens,
                        (call, not out_of_tokens, problem.tests, problem.test_setup)))
    run_calls([item[3] for item in pending], limits)
    for episode, text, out_of_tokens, (call, *_) in pending:
        if out_of_tokens:
            episode.transcript += text
            episode.stopped = "out_of_tokens"
            continue
        turn = f"{text}{CLOSE_TAGS[call.tool]}\n{RESULT_OPEN}{call.result}{RESULT_CLOSE}\n"
        episode.transcript += turn
        episode.context += turn
        if episode.turns >= max_turns:
            episode.stopped = "max_turns"


def score_answers(episodes: Sequence[Episode], limits: SandboxLimits) -> None:
    """Set ``correct``: arithmetic answers as numbers (last number of the answer, as lm-eval's flexible
    extract), code answers by the problem's tests in the sandbox."""
    code = [episode for episode in episodes if episode.problem.kind == "code" and episode.answer]
    programs = [python_program(textwrap.dedent(e.answer).strip("\n"), e.problem.tests, e.problem.test_setup)
                for e in code]
    for episode, outcome in zip(code, run_programs(programs, limits) if programs else []):
        episode.correct = outcome.passed
    for episode in episodes:
        if episode.problem.kind == "arithmetic" and episode.answer is not None:
            predicted = scoring.extract_flexible(episode.answer)
            episode.correct = scoring.number_match(predicted, episode.problem.answer, numeric=True)


def item_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """One item's share of the metrics that are means over items: answered right, turns, made a well-formed call,
    gave an answer."""
    return {"accuracy": float(record["correct"]), "avg_turns": float(record["turns"]),
            "tool_usage_rate": float(any(call["well_formed"] for call in record["calls"])),
            "answer_rate": float(record["answer"] is not None)}


def tool_use_metrics(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Metrics of per-item records (``Episode.record()`` plus ``sample_correct``: one bool per sampled
    run). Rates and tool counts come from the greedy runs; pass@k for each k up to the fewest samples."""
    if not records:
        raise ValueError("tool_use_metrics needs at least one record")
    per_item = [item_metrics(record) for record in records]
    metrics = {name: float(np.mean([item[name] for item in per_item])) for name in per_item[0]}
    for tool in TOOLS:
        calls = [call for record in records for call in record["calls"] if call["tool"] == tool]
        metrics[f"calls/{tool}"] = float(len(calls))
        metrics[f"errors/{tool}"] = float(sum(call["error"] is not None for call in calls))
    for source in sorted({record["source"] for record in records}):
        metrics[f"accuracy/{source}"] = float(np.mean([r["correct"] for r in records if r["source"] == source]))
    fewest = min(len(record["sample_correct"]) for record in records)
    for k in PASS_AT_K:
        if k <= fewest:
            metrics[f"pass@{k}"] = float(np.mean([
                scoring.pass_at_k(len(r["sample_correct"]), sum(r["sample_correct"]), k) for r in records]))
    return metrics


def accuracy_intervals(correct: Sequence[Sequence[bool]], *, resamples: int = 1000, seed: int = 0,
                       confidence: float = 0.95) -> list[dict[str, Any]]:
    """Per prompt (one row of per-item results each, the same items in the same order): its accuracy with a
    percentile bootstrap interval, and its paired difference to the first row (the incumbent) with the interval
    over the same item resamples (``benchmarks.scoreboard.paired_intervals`` of one task)."""
    entries = paired_intervals([correct], [1.0], resamples=resamples, seed=seed, confidence=confidence)
    return [{"accuracy": entry.pop("value"), **entry} for entry in entries]


@dataclass
class ToolUseResult:
    """Metrics and per-item records of one evaluation (JSON-able through ``to_dict``)."""

    metrics: dict[str, float]  # tool_use_metrics of the records
    n_items: int  # problems evaluated
    prompt: str  # the system/tool prompt that was put in front of every item
    config: dict[str, Any]  # the ToolUseConfig as a dict
    records: list[dict[str, Any]]  # per item: the greedy run (transcript, calls, answer) and sample_correct
    wall_s: float  # seconds the evaluation took (of the original run when cached)
    cached: bool = False  # whether this result came from the cache

    @property
    def score(self) -> float:
        return self.metrics["accuracy"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ToolUseResult":
        return cls(**dict(data))


def draw_shots(problems: Sequence[ToolProblem], pool: Sequence[ToolProblem], num_fewshot: int, seed: int,
               limits: SandboxLimits) -> list[list[tuple[ToolProblem, str]]]:
    """``num_fewshot`` worked examples per problem: pool problems of its source, never itself."""
    if num_fewshot == 0:
        return [[] for _ in problems]
    by_source: dict[str, list[ToolProblem]] = {}
    for shot in pool:
        by_source.setdefault(shot.source, []).append(shot)
    rng = random.Random(seed)
    drawn = []
    for problem in problems:
        candidates = [shot for shot in by_source.get(problem.source, []) if shot.id != problem.id]
        if len(candidates) < num_fewshot:
            raise ValueError(f"{num_fewshot} worked examples of source {problem.source!r} are needed but the "
                             f"few-shot pool has {len(candidates)}: pass fewshot= or lower num_fewshot")
        drawn.append(rng.sample(candidates, num_fewshot))
    transcripts = demonstrations(list({shot.id: shot for shots in drawn for shot in shots}.values()), limits)
    return [[(shot, transcripts[shot.id]) for shot in shots] for shots in drawn]


def training_examples(sources: Sequence[str], config: ToolUseConfig, prompt: str, data_dir,
                      limit: int | None) -> list[tuple[str, str]]:
    """(context, transcript) pairs of train-side problems (``limit`` per source, drawn with the config's seed),
    in exactly the format :func:`evaluate_tool_use` prompts with: training text for tool use."""
    pool = load_problems(sources, heldout=False, data_dir=data_dir)
    problems = load_problems(sources, heldout=False, limit=limit, seed=config.seed + 1, data_dir=data_dir)
    shots = draw_shots(problems, pool, config.num_fewshot, config.seed + 1, config.sandbox)
    transcripts = demonstrations(problems, config.sandbox)
    return [(build_context(prompt, problem, item_shots), transcripts[problem.id])
            for problem, item_shots in zip(problems, shots)]


def evaluate_direct(model, tokenizer, *, prompt: str, problems: Sequence[ToolProblem],
                    config: ToolUseConfig = ToolUseConfig(), fewshot: Sequence[ToolProblem] | None = None,
                    data_dir=None) -> ToolUseResult:
    """Arithmetic ``problems`` answered without a tool: the worked examples :func:`evaluate_tool_use` draws (same
    seed) shown answering directly, then the question and an opened answer tag; one greedy line per item."""
    if not problems or any(problem.kind != "arithmetic" for problem in problems):
        raise ValueError("evaluate_direct needs arithmetic problems (a code task has no direct numeric answer)")
    start = time.perf_counter()
    if fewshot is None and config.num_fewshot > 0:
        fewshot = load_problems(sorted({problem.source for problem in problems}), heldout=False, data_dir=data_dir)
    shots = draw_shots(problems, fewshot or (), config.num_fewshot, config.seed, config.sandbox)
    episodes = [Episode(problem, build_context(prompt, problem, [(shot, answer_text(shot.answer)) for shot, _ in
                                                                   item_shots]) + ANSWER_OPEN)
                for problem, item_shots in zip(problems, shots)]
    was_training = model.training
    model.eval()
    try:
        texts = generate_until(model, tokenizer, [episode.context for episode in episodes], until=STOP_SEQUENCES,
                               max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
                               seed=config.seed)
    finally:
        model.train(was_training)
    for episode, text in zip(episodes, texts):
        # A number's answer is one line, its first non-empty one: the last-number scorer must not find a number
        # the model wrote after it.
        first_line = next((line.strip() for line in text.splitlines() if line.strip()), "")
        episode.turns, episode.answer, episode.stopped = 1, first_line, "answer"
        episode.transcript = answer_text(episode.answer)
    score_answers(episodes, config.sandbox)
    records = [{**episode.record(), "sample_correct": [], "sample_turns": []} for episode in episodes]
    return ToolUseResult(metrics=tool_use_metrics(records), n_items=len(problems), prompt=prompt,
                         config={**asdict(config), "direct": True}, records=records,
                         wall_s=time.perf_counter() - start)


def evaluate_tool_use(model, tokenizer, *, prompt: str, problems: Sequence[ToolProblem],
                      config: ToolUseConfig = ToolUseConfig(), fewshot: Sequence[ToolProblem] | None = None,
                      data_dir=None, cache: ResultCache | None = None,
                      weights_hash: str | None = None) -> ToolUseResult:
    """Run the tool-use loop on every problem and return metrics with per-item records.

    prompt: the system/tool prompt under test ("" for none). fewshot: the pool of worked examples
    (None: the train side of each problem's source, read from ``data_dir``). cache: an identical
    (weights, tokenizer, prompt, problems, examples, config) run is returned without the model;
    weights_hash: the model's ``state_dict_hash`` when known.
    """
    if not problems:
        raise ValueError("evaluate_tool_use needs at least one problem: see load_problems()")
    start = time.perf_counter()
    if fewshot is None and config.num_fewshot > 0:
        fewshot = load_problems(sorted({problem.source for problem in problems}), heldout=False, data_dir=data_dir)
    shots = draw_shots(problems, fewshot or (), config.num_fewshot, config.seed, config.sandbox)
    contexts = [build_context(prompt, problem, item_shots) for problem, item_shots in zip(problems, shots)]
    config_dict = asdict(config)
    key = None
    if cache is not None:
        key = cache_key(weights_hash or state_dict_hash(model.state_dict()), TASK_NAME, prompt,
                        {**config_dict, "tokenizer": tokenizer_fingerprint(tokenizer),
                         "items": docs_digest([problem.to_dict() for problem in problems]),
                         "contexts": docs_digest(contexts)})
        stored = cache.get(key)
        if stored is not None:
            return ToolUseResult.from_dict({**stored, "cached": True})
    greedy = [Episode(problem, context) for problem, context in zip(problems, contexts)]
    sampled = [Episode(problem, context, sample) for problem, context in zip(problems, contexts)
               for sample in range(config.num_samples)]
    was_training = model.training
    model.eval()
    try:
        info = probe_model(model, tokenizer)
        for turn in range(config.max_turns):
            for group, temperature in ((greedy, 0.0), (sampled, config.temperature)):
                running = [episode for episode in group if not episode.stopped]
                if not running:
                    continue
                texts = generate_until(model, tokenizer, [episode.context for episode in running],
                                       until=STOP_SEQUENCES, max_new_tokens=config.max_new_tokens,
                                       batch_size=config.batch_size, temperature=temperature,
                                       seed=config.seed + turn, info=info)
                # generate_until drops the stop sequence; a turn that used its whole budget was cut off.
                exhausted = [len(encode(tokenizer, text)) >= config.max_new_tokens for text in texts]
                advance(running, texts, exhausted, max_turns=config.max_turns, limits=config.sandbox)
    finally:
        model.train(was_training)
    score_answers(greedy + sampled, config.sandbox)
    records = []
    for index, episode in enumerate(greedy):
        runs = sampled[index * config.num_samples:(index + 1) * config.num_samples]
        records.append({**episode.record(), "sample_correct": [run.correct for run in runs],
                        "sample_turns": [run.turns for run in runs]})
    result = ToolUseResult(metrics=tool_use_metrics(records), n_items=len(problems),
                           prompt=prompt, config=config_dict, records=records, wall_s=time.perf_counter() - start)
    if cache is not None:
        cache.put(key, result.to_dict())
    return result
