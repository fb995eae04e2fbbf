"""``evaluate``: run benchmark tasks on a causal LM and return per-task metrics; the Phase 6 suite."""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from forge.artifacts import state_dict_hash

from benchmarks import scoring
from benchmarks.cache import ResultCache, cache_key
from benchmarks.lm import (DEFAULT_MAX_BATCH_TOKENS, generate_until, loglikelihood_choices, perplexity,
                           probe_model)
from benchmarks.sandbox import SandboxLimits, run_programs
from benchmarks.tasks import Task, build_contexts, get_task, load_docs, load_fewshot_pool, select_docs

# The Phase 6 benchmark suite and its weights (spec 000, "Benchmark Suite Testing"); ARC's 0.15 is
# shared by ARC-Easy and ARC-Challenge.
TASK_WEIGHTS: dict[str, float] = {
    "mmlu": 0.20,
    "gsm8k": 0.15,
    "humaneval": 0.20,
    "math": 0.15,
    "hellaswag": 0.15,
    "arc_easy": 0.075,
    "arc_challenge": 0.075,
}

PASS_AT_K = (1, 10, 100)


@dataclass
class TaskResult:
    """Metrics of one task on one model."""

    task: str  # task name
    metrics: dict[str, float]  # metric name -> value (acc, acc_norm, exact_match_*, pass@k, perplexity)
    primary_metric: str  # the metric aggregate_score uses
    n_items: int  # number of items evaluated
    wall_s: float  # seconds the evaluation took (of the original run when cached)
    cached: bool = False  # whether this result came from the cache
    config: dict[str, Any] = field(default_factory=dict)  # settings that produced it
    samples: list[dict[str, Any]] | None = None  # per-item records when evaluate(log_samples=True)

    @property
    def score(self) -> float:
        return self.metrics[self.primary_metric]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TaskResult":
        return cls(**dict(data))


def aggregate_score(results: Mapping[str, TaskResult], weights: Mapping[str, float] = TASK_WEIGHTS) -> float:
    """Weighted mean of the tasks' primary metrics (weights are normalised to sum to 1)."""
    missing = [name for name in weights if name not in results]
    if missing:
        raise ValueError(f"aggregate_score needs results for {', '.join(missing)}: evaluate those tasks too")
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("aggregate_score needs positive weights")
    return sum(weights[name] * results[name].score for name in weights) / total


def item_scores(task_name: str, result: TaskResult) -> list[float]:
    """Per item of ``result`` (evaluated with ``log_samples=True``), its value of the task's primary metric, whose
    mean is the task's score: a code item's pass@1 from its passing samples, any other item's own record."""
    if result.samples is None:
        raise ValueError(f"{task_name}: per-item scores need evaluate(..., log_samples=True)")
    task = get_task(task_name)
    if task.kind == "code":
        return [scoring.pass_at_k(len(item["completions"]), item["correct"], 1) for item in result.samples]
    return [float(item[task.primary_metric]) for item in result.samples]


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()


def docs_digest(docs: Sequence[dict]) -> str:
    return hashlib.sha256(json.dumps(docs, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class _RunSettings:
    num_fewshot: int | None
    seed: int
    prompt: str | None
    batch_size: int
    max_batch_tokens: int
    max_new_tokens: int | None
    num_samples: int
    temperature: float
    sandbox: SandboxLimits
    suppress_token_ids: tuple[int, ...] = ()


Samples = list[dict[str, Any]]


def _mean(per_item: Samples, names) -> dict[str, float]:
    return {name: float(np.mean([item[name] for item in per_item])) for name in names}


def _multiple_choice(model, tokenizer, task: Task, docs, contexts, settings: _RunSettings, info):
    choices = [task.doc_to_choice(doc) for doc in docs]
    requests = [(context, [task.target_delimiter + choice for choice in options])
                for context, options in zip(contexts, choices)]
    lls = loglikelihood_choices(model, tokenizer, requests, batch_size=settings.batch_size,
                                max_batch_tokens=settings.max_batch_tokens, info=info)
    samples = [{"id": doc["id"], "loglikelihoods": ll, "label": doc["label"],
                **scoring.multiple_choice_metrics(ll, options, doc["label"])}
               for ll, options, doc in zip(lls, choices, docs)]
    return _mean(samples, ("acc", "acc_norm")), samples


def _generate(model, tokenizer, task: Task, docs, contexts, settings: _RunSettings, info):
    outputs = generate_until(model, tokenizer, contexts, until=task.until,
                             max_new_tokens=settings.max_new_tokens or task.max_new_tokens,
                             batch_size=settings.batch_size, info=info,
                             suppress_token_ids=settings.suppress_token_ids)
    scores = [task.score_generation(doc, output) for doc, output in zip(docs, outputs)]
    samples = [{"id": doc["id"], "generation": output, **score} for doc, output, score in zip(docs, outputs, scores)]
    return _mean(samples, scores[0]), samples


def _code(model, tokenizer, task: Task, docs, contexts, settings: _RunSettings, info):
    n = settings.num_samples
    temperature = settings.temperature if n > 1 else 0.0
    prompts = [context for context in contexts for _ in range(n)]
    completions = generate_until(model, tokenizer, prompts, until=task.until,
                                 max_new_tokens=settings.max_new_tokens or task.max_new_tokens,
                                 batch_size=settings.batch_size, temperature=temperature, seed=settings.seed,
                                 info=info, suppress_token_ids=settings.suppress_token_ids)
    programs = [task.program(docs[index // n], completion) for index, completion in enumerate(completions)]
    outcomes = run_programs(programs, settings.sandbox)
    samples = [{"id": doc["id"], "completions": completions[i * n:(i + 1) * n],
                "statuses": [outcome.status for outcome in outcomes[i * n:(i + 1) * n]],
                "correct": sum(outcome.passed for outcome in outcomes[i * n:(i + 1) * n])}
               for i, doc in enumerate(docs)]
    metrics = {f"pass@{k}": float(np.mean([scoring.pass_at_k(n, item["correct"], k) for item in samples]))
               for k in PASS_AT_K if k <= n}
    return metrics, samples


def _evaluate_task(model, tokenizer, task: Task, docs, pool, settings: _RunSettings, info):
    """(metrics, per-item records) of one task."""
    if task.kind == "perplexity":
        return {"perplexity": perplexity(model, tokenizer, [doc["text"] for doc in docs])}, []
    shots = task.default_fewshot if settings.num_fewshot is None else settings.num_fewshot
    contexts = build_contexts(task, docs, num_fewshot=shots, pool=pool, seed=settings.seed, prompt=settings.prompt)
    run = {"multiple_choice": _multiple_choice, "generate": _generate, "code": _code}[task.kind]
    return run(model, tokenizer, task, docs, contexts, settings, info)


def _group_means(task: Task, docs, samples: Samples) -> dict[str, float]:
    """The primary metric per group of items, as ``"<metric>/<group>"`` (MMLU subjects, MATH levels)."""
    groups: dict[str, list[float]] = {}
    for doc, sample in zip(docs, samples):
        groups.setdefault(task.group_by(doc), []).append(sample[task.primary_metric])
    return {f"{task.primary_metric}/{group}": float(np.mean(values)) for group, values in sorted(groups.items())}


def evaluate(model, tokenizer, tasks: Sequence[str], *, limit: int | None = None, seed: int = 1234,
             num_fewshot: int | None = None, prompt: str | None = None, heldout_only: bool = False,
             cache: ResultCache | None = None, batch_size: int = 32, device: str | torch.device | None = None,
             data_dir: str | os.PathLike | None = None, max_new_tokens: int | None = None,
             num_samples: int = 1, temperature: float = 0.8, sandbox: SandboxLimits = SandboxLimits(),
             max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS, weights_hash: str | None = None,
             log_samples: bool = False, suppress_token_ids: Sequence[int] = ()) -> dict[str, TaskResult]:
    """Evaluate ``model`` on each task and return ``{task: TaskResult}``.

    limit: items per task, drawn with ``seed`` (None: all). num_fewshot: None uses each task's
    lm-eval default. prompt: a system/persona/tool text put in front of every item (not for
    perplexity). heldout_only: only the items ``forge.data.splits`` keeps out of pretraining.
    cache: results of an identical (weights, tokenizer, items, prompt, settings) run are returned
    without running the model. data_dir: the reference data folder (None: FORGE_DATA_DIR; "hub":
    download). max_new_tokens: overrides the tasks' generation budget. num_samples/temperature:
    samples per code problem for pass@k (1: greedy pass@1). weights_hash: the model's
    ``state_dict_hash`` when the caller knows it (saves hashing for the cache). log_samples: keep
    per-item records (log-likelihoods, generations, statuses) in ``TaskResult.samples``.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    selected = [get_task(name) for name in tasks]  # unknown names fail before any work
    if device is not None:
        model.to(device)
    settings = _RunSettings(num_fewshot=num_fewshot, seed=seed, prompt=prompt, batch_size=batch_size,
                            max_batch_tokens=max_batch_tokens, max_new_tokens=max_new_tokens,
                            num_samples=num_samples, temperature=temperature, sandbox=sandbox,
                            suppress_token_ids=tuple(suppress_token_ids))
    identity = None
    if cache is not None:
        identity = {"weights": weights_hash or state_dict_hash(model.state_dict()),
                    "tokenizer": tokenizer_fingerprint(tokenizer)}
    was_training = model.training
    model.eval()
    info = None
    results: dict[str, TaskResult] = {}
    try:
        for task in selected:
            start = time.perf_counter()
            all_docs = load_docs(task, data_dir, heldout_only=heldout_only)
            docs = select_docs(all_docs, limit, seed)
            if not docs:
                raise ValueError(f"task {task.name} has no items to evaluate (heldout_only={heldout_only})")
            config = {"limit": limit, "seed": seed, "num_fewshot": num_fewshot, "heldout_only": heldout_only,
                      "log_samples": log_samples,
                      "max_new_tokens": max_new_tokens, "num_samples": num_samples,
                      "temperature": temperature if num_samples > 1 else 0.0,
                      "suppress_token_ids": sorted(suppress_token_ids)}
            key = None
            if cache is not None:
                key = cache_key(identity["weights"], task.name, prompt,
                                {**config, "tokenizer": identity["tokenizer"], "items": docs_digest(docs),
                                 "sandbox": asdict(sandbox)})
                stored = cache.get(key)
                if stored is not None:
                    results[task.name] = TaskResult.from_dict({**stored, "cached": True})
                    continue
            info = info or probe_model(model, tokenizer)
            pool = load_fewshot_pool(task, data_dir)
            pool = all_docs if pool is None else pool
            metrics, samples = _evaluate_task(model, tokenizer, task, docs, pool, settings, info)
            if task.group_by is not None:
                metrics.update(_group_means(task, docs, samples))
            if task.guess_accuracy is not None:  # what "above chance" is measured against, on these items
                metrics["guess_accuracy"] = float(np.mean([task.guess_accuracy(doc) for doc in docs]))
            result = TaskResult(task=task.name, metrics=metrics, primary_metric=task.primary_metric,
                                n_items=len(docs), wall_s=time.perf_counter() - start, config=config,
                                samples=samples if log_samples else None)
            if cache is not None:
                cache.put(key, result.to_dict())
            results[task.name] = result
    finally:
        model.train(was_training)
    return results
