"""Ray actor that trains one Cognate model on the resource share the cluster layer gave it.

Created with ``actors.restarts.restart_options``: when its process dies, Ray starts it again and re-sends
``train``, which resumes from the model's last step checkpoint (``forge.pretrain.trainer``).
"""
from __future__ import annotations

from typing import Any

import ray

from actors.restarts import record_attempt
from forge.pretrain.trainer import TrainJob, run_train_job


@ray.remote
class CognateTrainer:
    """One per model, so the three Cognate models train at the same time."""

    def __init__(self, attempts_file: str) -> None:
        """``attempts_file``: where this actor's processes are recorded (``actors.restarts``)."""
        record_attempt(attempts_file)

    def train(self, job: TrainJob) -> dict[str, Any]:
        return run_train_job(job)
