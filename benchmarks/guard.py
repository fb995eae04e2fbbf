"""Phase 4's staged-quantization guard scored by the benchmarks harness, and the choice of guard for a job.

``forge.quant`` takes its guard from the caller (a :class:`forge.quant.staged.Guard`) and knows nothing of
benchmark tasks; the pipeline phase and ``python -m forge.quant`` choose one here.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch.nn as nn

from forge.quant.run import QuantizeJobConfig, next_token_guard
from forge.quant.staged import Guard


def task_guard(tokenizer, tasks: Sequence[str], *, limit: int, seed: int,
               data_dir: str | os.PathLike) -> Guard:
    """The mean score of ``tasks`` on a fixed sample of ``limit`` of their held-out items each (the items no
    phase trains on), drawn with ``seed``: the same items before and after every staged step."""
    from benchmarks.harness import evaluate as run_tasks

    tasks = tuple(tasks)
    if not tasks:
        raise ValueError("task_guard needs at least one benchmark task")

    def evaluate(model: nn.Module) -> float:
        results = run_tasks(model, tokenizer, tasks, limit=limit, seed=seed, heldout_only=True,
                            data_dir=data_dir)
        return sum(result.score for result in results.values()) / len(results)
    return Guard(evaluate, f"mean score of {', '.join(tasks)} ({limit} held-out items each)")


def job_guard(tokenizer, heldout_texts: Sequence[str], job: QuantizeJobConfig) -> Guard:
    """The guard ``job`` asks for: :func:`task_guard` on ``job.guard_tasks`` when there are some and a data
    folder (``job.data_dir``, else $FORGE_DATA_DIR), else next-token ``job.metric`` on ``heldout_texts``."""
    from forge.data.readers import default_data_dir

    data_dir = job.data_dir or default_data_dir()
    if job.guard_tasks and data_dir is not None:
        return task_guard(tokenizer, job.guard_tasks, limit=job.guard_limit, seed=job.guard_seed,
                          data_dir=str(data_dir))
    return next_token_guard(tokenizer, heldout_texts, job)
