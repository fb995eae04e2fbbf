"""Start or join Ray.

* Inside ``ray job submit`` Ray sets ``RAY_ADDRESS`` to the cluster: we join it.
* ``RayConfig.address`` set explicitly (``auto`` or ``host:port``): we join that.
* Otherwise we start a private local instance (the laptop case, ``ray.init(num_gpus=1)`` on a GTX 1660),
  declaring exactly the GPUs torch sees, never more: a GPU request that no node can satisfy pends forever.
"""
from __future__ import annotations

import logging
import os

from forge.config import RayConfig

log = logging.getLogger(__name__)


GPU_MEMORY_ENV = "FORGE_GPU_MEMORY_GIB"  # carries ray.gpu_memory_gib to the planner (and to Ray's workers)
WORKER_NICENESS_ENV = "RAY_worker_niceness"  # read by the raylet a local ray.init starts


def local_gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def connect(config: RayConfig | None = None) -> str:
    """Initialise Ray once per process; returns how ('existing', 'joined <addr>', 'local')."""
    import ray

    config = config or RayConfig()
    if config.gpu_memory_gib is not None:
        if config.gpu_memory_gib <= 0:
            raise ValueError(f"ray.gpu_memory_gib must be > 0, got {config.gpu_memory_gib}")
        os.environ[GPU_MEMORY_ENV] = str(config.gpu_memory_gib)
    if ray.is_initialized():
        return "existing"
    env_address = os.environ.get("RAY_ADDRESS", "")
    if env_address.startswith(("http://", "https://")):
        # That is the dashboard/job-server address used by the `ray job` CLI; ray.init cannot use it.
        log.warning("RAY_ADDRESS=%s is a dashboard URL (for `ray job submit`), not a cluster address; "
                    "ignoring it here", env_address)
        os.environ.pop("RAY_ADDRESS")
        env_address = ""
    address = config.address or env_address or None
    if address:
        ray.init(address=address, log_to_driver=True)
        return f"joined {address}"
    visible = local_gpu_count()
    num_gpus = visible if config.num_gpus is None else config.num_gpus
    if num_gpus > visible:
        raise ValueError(
            f"ray.num_gpus={num_gpus} but torch sees {visible} GPU(s) here; tasks asking for GPUs "
            f"that do not exist would wait forever. Set ray.num_gpus to at most {visible}."
        )
    # Ray starts its workers at nice 15 (below the driver). On a small machine Ray's own processes then preempt
    # the trainers' OpenMP threads at every wake-up: a tiny Cognate training step ran 10-15% slower in an actor at
    # nice 15 than at 0 (docs/BENCHMARKS.md). Our workers are the pipeline's work, so they run at the driver's
    # priority, as `ray job submit` runs a job's driver; RAY_worker_niceness set by the user wins.
    os.environ.setdefault(WORKER_NICENESS_ENV, "0")
    ray.init(address="local", num_cpus=config.num_cpus, num_gpus=num_gpus,
             include_dashboard=config.include_dashboard)
    return "local"
