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
from forge.quietstar.tokens import suppressed_thinking_ids


def task_guard(tokenizer, tasks: Sequence[str], *, limit: int, seed: int,
               data_dir: str | os.PathLike | None) -> Guard:
    """The mean score of ``tasks`` on a fixed sample of ``limit`` of their held-out items each (the items no
    phase trains on), drawn with ``seed``: the same items before and after every staged step. Answered with the
    thinking tokens suppressed, as the scoreboard reads direct answers: allowed, a thought opened on a direct
    problem scores as a wrong answer line, and the guard would reward healing that forgets Phase 3's thinking."""
    from benchmarks.harness import evaluate as run_tasks

    tasks = tuple(tasks)
    if not tasks:
        raise ValueError("task_guard needs at least one benchmark task")
    suppressed = suppressed_thinking_ids(tokenizer)

    def evaluate(model: nn.Module) -> float:
        results = run_tasks(model, tokenizer, tasks, limit=limit, seed=seed, heldout_only=True,
                            data_dir=data_dir, suppress_token_ids=suppressed)
        return sum(result.score for result in results.values()) / len(results)
    return Guard(evaluate, f"mean score of {', '.join(tasks)} ({limit} held-out items each)")


def job_guard(model, tokenizer, heldout_texts: Sequence[str], job: QuantizeJobConfig) -> Guard:
    """The guard ``job`` asks for. With guard tasks (``job.guard_tasks`` and a data folder, ``job.data_dir``
    else $FORGE_DATA_DIR; without one ``job.guard_tasks_offline``) on which the float ``model`` scores at least
    ``job.guard_task_floor``: the lower of the tasks' and the held-out text's scores, each as a fraction of the
    float model's, so a block is kept only if neither drops past the limit. Otherwise :func:`next_token_guard`
    alone."""
    from forge.data.readers import default_data_dir

    data_dir = job.data_dir or default_data_dir()
    text = next_token_guard(model, tokenizer, heldout_texts, job)
    tasks = job.guard_tasks if data_dir is not None else job.guard_tasks_offline
    if not tasks:
        return text
    task = task_guard(tokenizer, tasks, limit=job.guard_limit, seed=job.guard_seed,
                      data_dir=str(data_dir) if data_dir is not None else None)
    task_before = task.evaluate(model)
    if task_before < job.guard_task_floor or task_before <= 0:
        return Guard(text.evaluate, f"{text.description} (the float model's {task.description} is "
                                    f"{task_before:.3f}, under guard_task_floor {job.guard_task_floor})")
    text_before = text.evaluate(model)
    if text_before <= 0:  # nothing to lose on the text (a next-token accuracy of 0): the tasks guard alone
        return task
    return Guard(lambda quantized: min(task.evaluate(quantized) / task_before, text.evaluate(quantized) / text_before),
                 f"the lower of {task.description} ({task_before:.3f} on the float model) and "
                 f"{text.description} ({text_before:.4f}), each as a fraction of the float model's")
