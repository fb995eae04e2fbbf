"""Resource planning: how much of a GPU (or CPU) each model actor gets, decided in one place.

Every phase asks :func:`share_for` for the Ray options of its actors. On a node with GPUs an actor gets
the fraction of one GPU that its memory estimate needs (several small models share one GTX 1660); on a
CPU-only cluster it gets no GPU at all and an even share of the CPUs.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from cluster.runtime import GPU_MEMORY_ENV
from forge.devices import GiB, largest_micro_batch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DevicePlan:
    """What the cluster offers, read from Ray and (for GPU memory) from the devices themselves."""

    num_cpus: float
    num_gpus: float
    gpu_memory_bytes: list[int] = field(default_factory=list)
    """Free memory of each GPU torch can see (empty when the driver sees none)."""

    @property
    def device(self) -> str:
        return "cuda" if self.num_gpus > 0 else "cpu"


@dataclass(frozen=True)
class ResourceShare:
    """Ray actor options plus the torch device and thread count the actor should use."""

    num_cpus: float
    num_gpus: float
    device: str
    torch_threads: int
    gpu_memory_bytes: int | None = None
    """GPU memory this actor may use (its fraction of the planned GPU memory); None on CPU."""

    def ray_options(self) -> dict:
        options = {"num_cpus": self.num_cpus}
        if self.num_gpus > 0:
            options["num_gpus"] = self.num_gpus
        return options


def _probe_gpu_memory() -> list[int]:
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())]


def gpu_memory_cap_bytes() -> int | None:
    """``ray.gpu_memory_gib`` in bytes (set by ``cluster.runtime.connect``), or None."""
    value = os.environ.get(GPU_MEMORY_ENV)
    return None if not value else int(float(value) * GiB)


def plan_devices(device: str = "auto") -> DevicePlan:
    """Read the cluster's resources (Ray must be initialised), as the pipeline's ``device`` setting allows:
    ``cpu`` plans no GPU at all, ``cuda`` requires a GPU whose memory can be read, ``auto`` takes what is there.
    Each GPU's memory is its free memory, capped at ``ray.gpu_memory_gib``."""
    import ray

    resources = ray.cluster_resources()
    num_cpus = float(resources.get("CPU", 1.0))
    if device == "cpu":
        return DevicePlan(num_cpus=num_cpus, num_gpus=0.0)
    num_gpus = float(resources.get("GPU", 0.0))
    memory = _probe_gpu_memory()
    if num_gpus > 0 and not memory:
        # The driver has no GPU (a CPU head node): ask one GPU worker for its free memory.
        memory = ray.get(ray.remote(num_gpus=1)(_probe_gpu_memory).remote())
    if device == "cuda" and (num_gpus <= 0 or not memory):
        raise ValueError("device=cuda but the Ray cluster offers no GPU; use device=auto or cpu")
    cap = gpu_memory_cap_bytes()
    if cap is not None:
        memory = [min(free, cap) for free in memory]
    return DevicePlan(num_cpus=num_cpus, num_gpus=num_gpus, gpu_memory_bytes=memory)


def share_for(plan: DevicePlan, memory_bytes: int, n_actors: int) -> ResourceShare:
    """Resources for each of ``n_actors`` actors that each need ``memory_bytes`` of device memory."""
    if n_actors < 1:
        raise ValueError("n_actors must be at least 1")
    # Round down: shares that add up to more than the node has leave the last actor pending forever.
    cpus = max(math.floor(plan.num_cpus / n_actors * 100) / 100, 0.01)
    threads = max(1, math.floor(cpus))
    if plan.num_gpus <= 0 or not plan.gpu_memory_bytes:
        return ResourceShare(num_cpus=cpus, num_gpus=0.0, device="cpu", torch_threads=threads)
    per_gpu = min(plan.gpu_memory_bytes)
    fraction = memory_bytes / per_gpu
    if fraction > 1.0:
        raise ValueError(
            f"one actor needs {memory_bytes / GiB:.1f} GiB but a GPU has {per_gpu / GiB:.1f} GiB free: "
            "lower the batch size or sequence length"
        )
    # Round up to a twentieth so Ray's bookkeeping stays simple and shares never overlap.
    fraction = min(1.0, math.ceil(fraction * 20) / 20)
    if fraction * n_actors > plan.num_gpus and fraction < 1.0:
        log.info("%d actors of %.2f GPU each exceed the %g GPU(s) offered: some will wait for others",
                 n_actors, fraction, plan.num_gpus)
    return ResourceShare(num_cpus=min(cpus, 1.0), num_gpus=fraction, device="cuda",
                         torch_threads=threads, gpu_memory_bytes=int(fraction * per_gpu))


def plan_trainers(plan: DevicePlan, need: Callable[[int], int], n_actors: int,
                  target_batch: int) -> tuple[ResourceShare, int, int]:
    """Share, micro-batch and concurrency for ``n_actors`` trainers whose memory at micro-batch m is ``need(m)``.

    On a GPU: as many trainers side by side as fit at micro-batch >= 1 (the rest wait for a free share, so when
    the models do not fit together fewer run at once instead of failing), each with the largest power-of-two
    micro-batch dividing ``target_batch`` that fits its share. On CPU: an even CPU share, and the micro-batch
    that fits the machine's available memory divided among the trainers.
    """
    if plan.num_gpus <= 0 or not plan.gpu_memory_bytes:
        import psutil

        share = share_for(plan, 0, n_actors)
        return share, largest_micro_batch(psutil.virtual_memory().available // n_actors, need, target_batch), n_actors
    per_gpu = min(plan.gpu_memory_bytes)
    slots = max(1, math.floor(plan.num_gpus))  # whole GPUs; each holds floor(1 / fraction) trainers
    for per_gpu_trainers in range(math.ceil(n_actors / slots), 0, -1):
        fraction = math.floor(20 / per_gpu_trainers) / 20  # in twentieths, as share_for rounds
        if fraction <= 0 or need(1) > fraction * per_gpu:
            continue
        micro = largest_micro_batch(int(fraction * per_gpu), need, target_batch)
        share = share_for(plan, int(fraction * per_gpu), n_actors)
        concurrent = min(n_actors, per_gpu_trainers * slots)
        if concurrent < n_actors:
            log.warning("%d trainers of %.2f GPU each: %d run at a time (micro-batch %d)", n_actors, fraction,
                        concurrent, micro)
        return share, micro, concurrent
    raise ValueError(f"one trainer needs {need(1) / GiB:.1f} GiB at micro-batch 1 but a GPU offers "
                     f"{per_gpu / GiB:.1f} GiB: shorten cognate.train.seq_len, use activation_checkpointing, "
                     "or a smaller model")


def evaluation_share(state_dict, device: str, n_actors: int) -> ResourceShare:
    """The resource share of each of ``n_actors`` evaluations (no gradients) of a model with these weights."""
    plan = plan_devices(device)
    weight_bytes = sum(t.numel() * t.element_size() for t in state_dict.values())
    return share_for(plan, 3 * weight_bytes + 256 * 1024**2, n_actors)
