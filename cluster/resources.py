"""Resource planning: how much of a GPU (or CPU) each model actor gets, decided in one place.

Every phase asks :func:`share_for` for the Ray options of its actors. On a node with GPUs an actor gets
the fraction of one GPU that its memory estimate needs (several small models share one GTX 1660); on a
CPU-only cluster it gets no GPU at all and an even share of the CPUs.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

GiB = 1024**3

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


def plan_devices(device: str = "auto") -> DevicePlan:
    """Read the cluster's resources (Ray must be initialised), as the pipeline's ``device`` setting allows:
    ``cpu`` plans no GPU at all, ``cuda`` requires a GPU whose memory can be read, ``auto`` takes what is there."""
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
    return DevicePlan(num_cpus=num_cpus, num_gpus=num_gpus, gpu_memory_bytes=memory)


CUDA_CONTEXT_BYTES = 512 * 1024**2
"""CUDA context and workspace a GPU process holds besides its tensors."""


def training_memory_bytes(num_params: int, batch_size: int, seq_len: int, hidden_size: int,
                          num_layers: int, recursion_steps: int = 1, *, device: str = "cuda") -> int:
    """Rough float32 training footprint: weights, grads, two optimizer moments, activations.

    Activations: ~34 floats per token per layer per hidden unit (attention and MLP intermediates),
    times the refinement steps kept for backprop; a deliberate over-estimate so shares never overrun.
    """
    states = 4 * num_params * 4
    activations = 34 * batch_size * seq_len * hidden_size * num_layers * recursion_steps * 4
    return int(states + activations + (CUDA_CONTEXT_BYTES if device.startswith("cuda") else 0))


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
                         torch_threads=threads)


def safe_batch_size(free_bytes: int, num_params: int, seq_len: int, hidden_size: int, num_layers: int,
                    recursion_steps: int, target_batch: int, *, device: str = "cuda") -> tuple[int, int]:
    """Largest power-of-two micro-batch that fits ``free_bytes``, and the accumulation steps to
    reach ``target_batch`` sequences per optimizer step."""
    def need(batch: int) -> int:
        return training_memory_bytes(num_params, batch, seq_len, hidden_size, num_layers, recursion_steps,
                                     device=device)

    batch = 1
    while batch * 2 <= target_batch and need(batch * 2) <= free_bytes:
        batch *= 2
    if need(batch) > free_bytes:
        raise ValueError(
            f"even batch size 1 does not fit in {free_bytes / GiB:.1f} GiB; shorten the sequence length "
            "or use a smaller model"
        )
    return batch, math.ceil(target_batch / batch)


def evaluation_share(state_dict, device: str, n_actors: int) -> ResourceShare:
    """The resource share of each of ``n_actors`` evaluations (no gradients) of a model with these weights."""
    plan = plan_devices(device)
    weight_bytes = sum(t.numel() * t.element_size() for t in state_dict.values())
    return share_for(plan, 3 * weight_bytes + 256 * 1024**2, n_actors)
