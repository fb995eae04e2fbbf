"""Ray actor that trains one Cognate model on the resource share the cluster layer gave it."""
from __future__ import annotations

from typing import Any

import ray

from forge.training import TrainJob, run_train_job


@ray.remote
class CognateTrainer:
    """One per model, so the three Cognate models train at the same time."""

    def train(self, job: TrainJob) -> dict[str, Any]:
        return run_train_job(job)
