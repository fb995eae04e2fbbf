"""Device facts written once: where a model's weights are, a CUDA process's memory cap and overhead, and the
largest micro-batch that fits. Plain torch; the Ray-side planning (``cluster.resources``) builds on these."""
from __future__ import annotations

from collections.abc import Callable

import torch

GiB = 1024**3

CUDA_CONTEXT_BYTES = 512 * 1024**2
"""CUDA context and workspace a GPU process holds besides its tensors."""


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's (first) parameters: where its inputs go."""
    return next(model.parameters()).device


def limit_gpu_memory(device: str, memory_bytes: int | None) -> None:
    """Cap this process's CUDA allocator at ``memory_bytes`` (its share), so it cannot grow into its neighbours'
    shares: an allocation beyond it raises out-of-memory here instead of in another actor."""
    if not device.startswith("cuda") or memory_bytes is None:
        return
    index = torch.device(device).index or 0
    total = torch.cuda.get_device_properties(index).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, memory_bytes / total), index)


def largest_micro_batch(free_bytes: int, need: Callable[[int], int], target_batch: int) -> int:
    """Largest power of two dividing ``target_batch`` whose ``need`` fits ``free_bytes``."""
    if need(1) > free_bytes:
        raise ValueError(f"even micro-batch 1 needs {need(1) / GiB:.2f} GiB but {free_bytes / GiB:.2f} GiB are "
                         "available; shorten the sequence length or use a smaller model")
    micro = 1
    while micro * 2 <= target_batch and target_batch % (micro * 2) == 0 and need(micro * 2) <= free_bytes:
        micro *= 2
    return micro
