"""Benchmarks: an evaluation harness in the manner of lm-evaluation-harness, faster, plus its Ray actor.

``evaluate(model, tokenizer, ["arc_easy", "gsm8k"], limit=200)`` returns ``{task: TaskResult}``;
``aggregate_score(results, TASK_WEIGHTS)`` is the Phase 6 fitness. ``python -m benchmarks --help``.
"""
from benchmarks.cache import ResultCache
from benchmarks.harness import TASK_WEIGHTS, TaskResult, aggregate_score, evaluate
from benchmarks.lm import perplexity
from benchmarks.tasks import TASKS

__all__ = ["TASKS", "TASK_WEIGHTS", "ResultCache", "TaskResult", "aggregate_score", "evaluate", "perplexity"]
