"""The scoreboard: one fixed held-out evaluation of a model, the same items, seed and settings every time.

Figures (each with a seeded bootstrap confidence interval over items):

- ``heldout_perplexity``: Phase 1's held-out documents (no model trained on them); ``wikitext_perplexity``
  too when a data folder is given. Per document the summed NLL and the scored tokens; the statistic is
  exp(sum NLL / sum tokens) of the (re)sampled documents.
- ``task_accuracy``: the mean of the per-task accuracies (primary metric of each task) on held-out items:
  ``taskworld_easy`` (generated add and cmp problems) without a data folder, a small fixed subset of ARC-Easy,
  ARC-Challenge, PIQA, HellaSwag, GSM8K and MMLU with one; items are resampled within each task.
  ``task_accuracy/<task>`` per task, with the accuracy of a uniform guess on the same items (``guess_accuracy``)
  where the task defines one (``taskworld_easy``).
- ``tool_accuracy``: the multi-turn tool-use benchmark (``benchmarks.tooluse``) on held-out problems: without a
  data folder the ``hard`` multi-digit problems, which a tiny model solves only with the calculator (a call, then
  the answer: ``tool_max_turns`` 2), so the figure shows when a phase teaches or loses tool use.
- ``thinking_usage``: share of generated answers that open a thinking block on held-out multi-digit
  task-world problems, for models with the Quiet-STaR tokens (absent otherwise).
- ``tokens_per_s``: greedy generation speed (per prompt: tokens and seconds); ``size_mb``: weights on disk.

``score_model`` does the work (plain PyTorch and the harness, no Ray); ``row_key`` is its cache key (the
weights' hash from the model directory's manifest, the tokenizer files, the settings and the items), so
an unchanged model is never scored twice. The accuracy figures keep their per-item scores (``items``) and the
perplexities their per-document NLL and tokens (``documents``), so two rows compare on the same items
(``paired_change``). ``gate_decision`` compares an output row with its input's.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from forge.quietstar.tokens import has_thinking_tokens, suppressed_thinking_ids

DATA_TASKS = ("arc_easy", "arc_challenge", "piqa", "hellaswag", "gsm8k", "mmlu")
# Without a data folder: the task world's easy held-out problems (exact match; the tiny trunk trains on their train
# side). synthetic_reasoning (multiple choice, chance 0.25) gave every model of the default run 0.29-0.33.
OFFLINE_TASKS = ("taskworld_easy",)
TOOL_SOURCES_OFFLINE = ("hard",)
TOOL_SOURCES_WITH_DATA = ("easy", "svamp")
LOWER_IS_BETTER = {"heldout_perplexity", "wikitext_perplexity", "size_mb"}
PRIMARY_METRICS = ("heldout_perplexity", "task_accuracy", "tool_accuracy", "wikitext_perplexity")
WEIGHT_FILES = (".safetensors", ".bin")
ROW_FORMAT = 2  # 2: the figures carry their per-item scores (paired changes); a cached row of another format is rescored


@dataclass(frozen=True)
class ScoreboardSettings:
    """What decides a row besides the model (``forge.config.ScoreboardConfig`` minus the gate)."""

    heldout_chars: int  # characters of Phase 1's held-out documents scored for perplexity
    wikitext_docs: int  # WikiText-2 held-out documents (with a data folder)
    wikitext_chars: int  # characters of WikiText-2 in all, split evenly over the documents
    task_items: int  # items per task with a data folder
    offline_task_items: int  # items per task without one
    max_new_tokens: int  # generation budget of generated-answer tasks and thinking usage
    suppress_thinking: bool  # generated-answer tasks with the thinking tokens suppressed (models that have them)
    tool_items: int  # tool-use problems
    tool_max_turns: int  # model turns per tool-use problem
    thinking_items: int  # generated problems for thinking usage
    speed_prompts: int  # prompts of the tokens/s measurement
    speed_tokens: int  # tokens generated per speed prompt
    seed: int  # item draws and few-shot examples
    bootstrap_resamples: int  # resamples of each interval
    confidence: float  # coverage of each interval


def bootstrap_interval(samples: Sequence[np.ndarray], statistic: Callable[..., float], *, resamples: int, seed: int,
                       confidence: float) -> tuple[float, float]:
    """Percentile interval of ``statistic(*groups)`` with the items of each group resampled (stratified)."""
    if resamples < 1:
        raise ValueError(f"bootstrap needs at least one resample, got {resamples}")
    if any(len(group) == 0 for group in samples):
        raise ValueError("bootstrap needs at least one item in every group")
    rng = np.random.default_rng(seed)
    values = np.array([statistic(*(group[rng.integers(0, len(group), len(group))] for group in samples))
                       for _ in range(resamples)])
    tail = (1.0 - confidence) / 2
    # Sample quantiles without interpolation: an infinite statistic (a broken model) stays inf, not nan.
    return (float(np.quantile(values, tail, method="inverted_cdf")),
            float(np.quantile(values, 1.0 - tail, method="inverted_cdf")))


def paired_intervals(tasks: Sequence[Sequence[Sequence[float]]], weights: Sequence[float], *, resamples: int = 1000,
                     seed: int = 0, confidence: float = 0.95,
                     gain: Callable[[float, float], float] | None = None) -> list[dict[str, Any]]:
    """Per prompt, its weighted mean over tasks of per-item scores (``tasks[t][prompt][item]``: every prompt
    on the same items of each task, in the same order) with a bootstrap interval, and its paired difference to the
    first prompt (the incumbent) with the interval over the same item resamples (stratified by task): what tells a
    variant from the incumbent on one set of items. With ``gain(new, old)`` (e.g. a relative gain), each entry
    also has ``gain`` against the first prompt and its ``gain_interval`` over the same resamples."""
    if not tasks or len({len(rows) for rows in tasks}) != 1 or any(
            len({len(row) for row in rows}) != 1 or len(rows[0]) == 0 for rows in tasks):
        raise ValueError(f"paired_intervals needs, per task, rows of equal, non-zero length for the same prompts, got "
                         f"lengths {[sorted({len(row) for row in rows}) for rows in tasks]}")
    groups = [np.asarray(rows, dtype=float).T for rows in tasks]  # per task, one row per item: resampling pairs
    if len(weights) != len(groups) or sum(weights) <= 0 or min(weights) < 0:
        raise ValueError(f"paired_intervals needs one non-negative weight per task, summing above 0, got {weights}")
    if not 0 < confidence < 1:
        raise ValueError(f"need 0 < confidence < 1, got {confidence}")
    share = np.asarray(weights, dtype=float) / sum(weights)

    def means(*resampled: np.ndarray) -> np.ndarray:
        return sum(w * group.mean(axis=0) for w, group in zip(share, resampled))

    def interval(statistic) -> list[float]:
        # The same seed draws the same item resamples for every statistic.
        return list(bootstrap_interval(groups, statistic, resamples=resamples, seed=seed, confidence=confidence))

    def against_first(i: int, change: Callable[[float, float], float]):
        def statistic(*resampled: np.ndarray) -> float:
            resampled_means = means(*resampled)  # once per resample, not once per term
            return change(resampled_means[i], resampled_means[0])
        return statistic

    def difference(new: float, old: float) -> float:
        return new - old

    values = means(*groups)
    entries = [{"value": float(values[i]), "interval": interval(lambda *g, i=i: means(*g)[i]),
                "difference": float(values[i] - values[0]),
                "difference_interval": interval(against_first(i, difference))} for i in range(len(values))]
    if gain is not None:
        for i, entry in enumerate(entries):
            entry["gain"] = float(gain(values[i], values[0]))
            entry["gain_interval"] = interval(against_first(i, gain))
    return entries


def _figure(value: float, interval: tuple[float, float], n: int, **extra: Any) -> dict[str, Any]:
    return {"value": float(value), "low": interval[0], "high": interval[1], "n": n, **extra}


def _ratio_of_sums(pairs: np.ndarray) -> float:
    return float(pairs[:, 0].sum() / pairs[:, 1].sum())


def _perplexity_figure(model, tokenizer, texts: Sequence[str], s: ScoreboardSettings) -> dict[str, Any]:
    """Per document: NLL summed over its scored tokens (every token but the first), then the pooled figure."""
    from benchmarks.lm import encode, perplexity

    rows = []
    for text in texts:
        scored = len(encode(tokenizer, text)) - 1
        if scored < 1:
            continue
        try:
            nll = math.log(perplexity(model, tokenizer, [text])) * scored
        except OverflowError:
            # Over ~710 nats per token the perplexity is beyond float range: a broken model, recorded as inf
            # (the gate counts a non-finite figure as worse than any finite one).
            nll = math.inf
        rows.append((nll, scored))
    if not rows:
        raise ValueError("no held-out document has two tokens: the scoreboard has no text to measure perplexity on")
    pairs = np.array(rows, dtype=np.float64)
    statistic = lambda p: float(np.exp(_ratio_of_sums(p)))  # noqa: E731  (inf, not an error, past float range)
    interval = bootstrap_interval([pairs], statistic, resamples=s.bootstrap_resamples, seed=s.seed,
                                  confidence=s.confidence)
    return _figure(statistic(pairs), interval, len(rows), tokens=int(pairs[:, 1].sum()),
                   documents=pairs.tolist())


def task_figures(model, tokenizer, tasks: Sequence[str], data_dir, s: ScoreboardSettings) -> dict[str, Any]:
    """The scoreboard's task accuracy of ``model``: per task (``task_accuracy/<task>``) and their mean
    (``task_accuracy``), each ``{value, low, high, n}`` with its bootstrap interval."""
    from benchmarks.harness import evaluate, item_scores
    from benchmarks.tasks import get_task

    limit = s.task_items if data_dir else s.offline_task_items
    suppressed = suppressed_thinking_ids(tokenizer) if s.suppress_thinking else ()
    results = evaluate(model, tokenizer, list(tasks), limit=limit, seed=s.seed, heldout_only=True,
                       data_dir=data_dir, max_new_tokens=s.max_new_tokens, log_samples=True,
                       suppress_token_ids=suppressed)
    per_task = {name: np.array(item_scores(name, results[name]), dtype=float) for name in tasks}
    figures = {}
    for name, values in per_task.items():
        interval = bootstrap_interval([values], np.mean, resamples=s.bootstrap_resamples, seed=s.seed,
                                      confidence=s.confidence)
        guess = results[name].metrics.get("guess_accuracy")
        figures[f"task_accuracy/{name}"] = _figure(values.mean(), interval, len(values),
                                                   metric=get_task(name).primary_metric,
                                                   **({} if guess is None else {"guess_accuracy": guess}))
    statistic = lambda *groups: float(np.mean([g.mean() for g in groups]))  # noqa: E731
    groups = list(per_task.values())
    interval = bootstrap_interval(groups, statistic, resamples=s.bootstrap_resamples, seed=s.seed,
                                  confidence=s.confidence)
    figures["task_accuracy"] = _figure(statistic(*groups), interval, sum(map(len, groups)), tasks=list(tasks),
                                       items={name: values.tolist() for name, values in per_task.items()})
    return figures


def _tool_figure(model, tokenizer, data_dir, s: ScoreboardSettings) -> dict[str, Any]:
    from benchmarks.tooluse import INITIAL_TOOL_PROMPT, ToolUseConfig, evaluate_tool_use, load_problems

    sources = list(TOOL_SOURCES_WITH_DATA if data_dir else TOOL_SOURCES_OFFLINE)
    problems = load_problems(sources, heldout=True, limit=s.tool_items, seed=s.seed, data_dir=data_dir)
    config = ToolUseConfig(max_turns=s.tool_max_turns, max_new_tokens=s.max_new_tokens, num_fewshot=1,
                           num_samples=0, seed=s.seed)
    result = evaluate_tool_use(model, tokenizer, prompt=INITIAL_TOOL_PROMPT, problems=problems, config=config,
                               data_dir=data_dir)
    correct = np.array([record["correct"] for record in result.records], dtype=float)
    interval = bootstrap_interval([correct], np.mean, resamples=s.bootstrap_resamples, seed=s.seed,
                                  confidence=s.confidence)
    return _figure(correct.mean(), interval, len(correct), sources=sources,
                   tool_usage_rate=result.metrics["tool_usage_rate"], items={"tool": correct.tolist()})


def thinking_problems(s: ScoreboardSettings) -> list[tuple[str, str]]:
    """(question, answer) of the thinking-usage figure: held-out multi-digit task-world problems, the cells
    Quiet-STaR's thoughts are traces of (``forge.quietstar.taskworld.CELLS``, in turn). Easy problems are not
    asked: a model that answers them directly is right not to think."""
    from forge.quietstar.taskworld import TaskWorldReasoningConfig, TaskWorldReasoningGenerator

    world = TaskWorldReasoningGenerator(TaskWorldReasoningConfig(heldout=True, seed=s.seed))
    return [(item.question, item.answer) for item in world.items(s.thinking_items)]


def _thinking_figure(model, tokenizer, s: ScoreboardSettings) -> dict[str, Any]:
    from forge.quietstar.generate import answer_accuracy

    problems = thinking_problems(s)
    scored = answer_accuracy(model, tokenizer, problems, max_new_tokens=s.max_new_tokens, allow_thinking=True)
    used = np.array([item["used_thinking"] for item in scored["items"]], dtype=float)
    interval = bootstrap_interval([used], np.mean, resamples=s.bootstrap_resamples, seed=s.seed,
                                  confidence=s.confidence)
    return _figure(used.mean(), interval, len(used), answer_accuracy=scored["accuracy"])


def _speed_figure(model, tokenizer, s: ScoreboardSettings) -> dict[str, Any]:
    """Greedy tokens/s, one prompt at a time (thinking not allowed: the same work for every model)."""
    from forge.quietstar.generate import generate
    from forge.quietstar.synthetic import SyntheticConfig, SyntheticReasoningGenerator

    generator = SyntheticReasoningGenerator(SyntheticConfig(heldout=True, seed=s.seed + 1))
    prompts = [f"Question: {e.question}\n" for e in generator.generate(s.speed_prompts)]
    generate(model, tokenizer, prompts[:1], max_new_tokens=2, allow_thinking=False)  # warm-up, not timed
    rows = []
    for prompt in prompts:
        started = time.perf_counter()
        output = generate(model, tokenizer, [prompt], max_new_tokens=s.speed_tokens, allow_thinking=False)[0]
        rows.append((output.generated_tokens, time.perf_counter() - started))
    pairs = np.array(rows, dtype=np.float64)
    interval = bootstrap_interval([pairs], _ratio_of_sums, resamples=s.bootstrap_resamples, seed=s.seed,
                                  confidence=s.confidence)
    return _figure(_ratio_of_sums(pairs), interval, len(rows))


def weights_size_mb(model_dir: Path) -> float:
    """Megabytes of weight files in a model directory (what a user downloads and loads)."""
    files = [p for p in Path(model_dir).iterdir() if p.suffix in WEIGHT_FILES]
    if not files:
        raise FileNotFoundError(f"{model_dir} holds no weight file ({', '.join(WEIGHT_FILES)})")
    return sum(p.stat().st_size for p in files) / 1e6


def score_model(model, tokenizer, model_dir: Path, settings: ScoreboardSettings, *, heldout_texts: Sequence[str],
                wikitext_texts: Sequence[str] | None, data_dir) -> dict[str, Any]:
    """The scoreboard figures of one model (loaded from ``model_dir``); see the module doc."""
    import torch

    started, cpu_started = time.perf_counter(), time.process_time()
    was_training = model.training
    model.eval()
    metrics: dict[str, Any] = {}
    timings: dict[str, float] = {}

    def timed(name: str, measure: Callable[[], dict[str, Any]]) -> None:
        begin = time.perf_counter()
        figures = measure()
        metrics.update(figures if name == "task_accuracy" else {name: figures})
        timings[name] = round(time.perf_counter() - begin, 2)

    try:
        with torch.no_grad():
            timed("heldout_perplexity", lambda: _perplexity_figure(model, tokenizer, heldout_texts, settings))
            if wikitext_texts:
                timed("wikitext_perplexity", lambda: _perplexity_figure(model, tokenizer, wikitext_texts, settings))
            tasks = DATA_TASKS if data_dir else OFFLINE_TASKS
            timed("task_accuracy", lambda: task_figures(model, tokenizer, tasks, data_dir, settings))
            timed("tool_accuracy", lambda: _tool_figure(model, tokenizer, data_dir, settings))
            if has_thinking_tokens(tokenizer):
                timed("thinking_usage", lambda: _thinking_figure(model, tokenizer, settings))
            timed("tokens_per_s", lambda: _speed_figure(model, tokenizer, settings))
    finally:
        model.train(was_training)
    size = weights_size_mb(model_dir)
    metrics["size_mb"] = _figure(size, (size, size), 1)
    return {"metrics": metrics, "timings_s": timings, "score_s": round(time.perf_counter() - started, 2),
            "score_cpu_s": round(time.process_time() - cpu_started, 2)}  # CPU time: the cost on a shared machine


def wikitext_heldout(data_dir, settings: ScoreboardSettings) -> list[str]:
    """The WikiText-2 held-out documents the scoreboard scores (a fixed draw), [] without a data folder."""
    if not data_dir:
        return []
    from benchmarks.tasks import get_task, load_docs, select_docs

    docs = load_docs(get_task("wikitext"), data_dir, heldout_only=True)
    per_document = max(1, settings.wikitext_chars // settings.wikitext_docs)
    return [doc["text"][:per_document] for doc in select_docs(docs, settings.wikitext_docs, settings.seed)]


def row_key(model_manifest: Mapping[str, Any], settings: ScoreboardSettings, items: Mapping[str, Any]) -> str:
    """Cache key of a row: the weights' hash and tokenizer files from the model's manifest, the settings and
    a digest of the items (texts, data folder)."""
    tokenizer_files = {name: meta["sha256"] for name, meta in model_manifest["files"].items()
                       if name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "added_tokens"))}
    payload = json.dumps({"weights": model_manifest["weights_sha256"], "tokenizer": tokenizer_files,
                          "settings": asdict(settings), "items": items, "row_format": ROW_FORMAT},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def better(metric: str, a: float, b: float) -> bool:
    """Whether value ``a`` of ``metric`` is better than ``b``."""
    return a < b if metric in LOWER_IS_BETTER else a > b


def paired_change(output: Mapping[str, Any], baseline: Mapping[str, Any], *, resamples: int, seed: int,
                  confidence: float) -> dict[str, Any] | None:
    """The change of a figure from ``baseline`` to ``output`` on the same items, with the interval of the paired
    bootstrap: tighter than the two figures' own intervals, since both models answer the same items. An accuracy's
    change is a difference (items resampled within each task, the tasks weighted equally as in the figure); a
    perplexity's is relative (``relative``: output / baseline - 1, documents resampled). None where either figure has
    no per-item scores, their items differ, or a perplexity is not finite."""
    if "documents" in output and "documents" in baseline:
        return _perplexity_change(baseline["documents"], output["documents"], resamples=resamples, seed=seed,
                                  confidence=confidence)
    before, after = baseline.get("items"), output.get("items")
    if not before or not after or list(before) != list(after) or any(
            len(before[task]) != len(after[task]) for task in before):
        return None
    entry = paired_intervals([[before[task], after[task]] for task in before], [1.0] * len(before),
                             resamples=resamples, seed=seed, confidence=confidence)[1]
    low, high = entry["difference_interval"]
    return {"value": entry["difference"], "low": low, "high": high}


def _perplexity_change(before: Sequence[Sequence[float]], after: Sequence[Sequence[float]], *, resamples: int,
                       seed: int, confidence: float) -> dict[str, Any] | None:
    """The relative change of a perplexity on the same documents (rows of summed NLL and scored tokens)."""
    before_rows, after_rows = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    if before_rows.shape != after_rows.shape or not np.array_equal(before_rows[:, 1], after_rows[:, 1]) or not (
            np.isfinite(before_rows).all() and np.isfinite(after_rows).all()):
        return None  # other documents, another tokenizer's tokens, or a broken model's infinite NLL
    rows = np.column_stack([before_rows[:, 0], after_rows[:, 0], before_rows[:, 1]])

    def ratio(resampled: np.ndarray) -> float:
        return float(np.exp((resampled[:, 1].sum() - resampled[:, 0].sum()) / resampled[:, 2].sum()) - 1.0)

    low, high = bootstrap_interval([rows], ratio, resamples=resamples, seed=seed, confidence=confidence)
    return {"value": ratio(rows), "low": low, "high": high, "relative": True}


def change_text(change: Mapping[str, Any]) -> str:
    """``-0.133 [-0.211, -0.056]`` (``-4.9% [-6.1%, -3.7%]`` for a relative change): a :func:`paired_change` as the
    console and the report print it."""
    form = "{:+.1%}" if change.get("relative") else "{:+.3f}"
    return f"{form.format(change['value'])} [{form.format(change['low'])}, {form.format(change['high'])}]"


def worse_on_same_items(by_metric: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``task_accuracy -0.133 [-0.211, -0.056]`` for each figure's :func:`gate_decision` (``{figure: decision}``)
    whose paired change lies wholly on the worse side of 0 (its interval's lower end above 0 for a lower-is-better
    figure, its upper end below 0 otherwise)."""
    worse = []
    for key, decision in by_metric.items():
        change = decision.get("paired_change")
        if change is not None and (change["low"] > 0 if decision["lower_is_better"] else change["high"] < 0):
            worse.append(f"{key} {change_text(change)}")
    return worse


def gate_decision(output: Mapping[str, Any], inputs: Mapping[str, Mapping[str, Any]], metric: str,
                  tolerance: float, *, resamples: int = 1000, seed: int = 0,
                  confidence: float = 0.95) -> dict[str, Any]:
    """Whether ``output`` is worse than the best input on ``metric`` beyond both intervals.

    Worse means: the output's whole interval lies on the worse side of the best input's interval by more
    than ``tolerance`` times the input's value (lower-is-better metrics: output low > input high + margin;
    higher-is-better: output high < input low - margin). Overlapping intervals are not a difference. The
    decision also records the :func:`paired_change` from the best input (bootstrap ``resamples``, ``seed``,
    ``confidence``), which the gate does not act on: the console and the report show it.
    """
    if not inputs:
        raise ValueError("gate_decision needs at least one input row")
    missing = [name for name, row in {"output": output, **inputs}.items() if metric not in row["metrics"]]
    if missing:
        raise ValueError(f"the scoreboard metric {metric!r} is missing from the rows of {', '.join(missing)}; "
                         f"choose one of {', '.join(sorted(output['metrics']))}")
    best_name = None
    for name, row in inputs.items():
        value = row["metrics"][metric]["value"]
        if best_name is None or better(metric, value, inputs[best_name]["metrics"][metric]["value"]):
            best_name = name
    out, best = output["metrics"][metric], inputs[best_name]["metrics"][metric]
    margin = tolerance * abs(best["value"])
    if not math.isfinite(out["value"]):
        worse = math.isfinite(best["value"])  # a NaN or infinite figure is worse than any finite one
    elif metric in LOWER_IS_BETTER:
        worse = out["low"] > best["high"] + margin
    else:
        worse = out["high"] < best["low"] - margin
    return {"metric": metric, "tolerance": tolerance, "worse": bool(worse), "best_input": best_name,
            "input": {k: best[k] for k in ("value", "low", "high")},
            "output": {k: out[k] for k in ("value", "low", "high")},
            "lower_is_better": metric in LOWER_IS_BETTER,
            "paired_change": paired_change(out, best, resamples=resamples, seed=seed, confidence=confidence)}
