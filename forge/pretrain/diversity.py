"""Behaviour diversity of Phase 1's models: how differently they behave, measured, not how far apart their weights are.

Each model gets a **profile**: named groups of measured features, here

- ``heldout_perplexity``: perplexity on each dataset's held-out documents (feature = dataset),
- ``halting_steps``: mean ACT supervision steps per token,
- ``memory_use``: how much the memory's writes change its reads, ``||M_t(q) - q||`` for unit queries ``q``
  (``M_0`` is the identity, so 0 means the memory holds nothing the model reads),
- ``speed``: forward tokens per second on one thread.

A feature's **spread** over the models is their mean pairwise relative difference, ``mean |a - b| / mean |v|``
(0: all equal; 1: on average the pairs differ by the mean; scale-free, so perplexities, steps and tokens/s
compare). A group's spread is the mean over its features, and the **diversity** is the mean over the groups,
so each kind of behaviour counts once however many features it has. More groups (per-task exact-match
accuracy, say) join by adding one more entry to each model's profile.
"""
from __future__ import annotations

import itertools
import math
import time
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from forge.pretrain.trainer import evaluate_lm


def relative_spread(values: list[float]) -> float:
    """Mean pairwise ``|a - b|`` divided by the mean ``|v|``; 0 when all values are 0."""
    if len(values) < 2:
        raise ValueError(f"a spread needs at least two models, got {len(values)}")
    scale = sum(abs(v) for v in values) / len(values)
    if scale == 0:
        return 0.0
    pairs = list(itertools.combinations(values, 2))
    return sum(abs(a - b) for a, b in pairs) / len(pairs) / scale


def profile_diversity(profiles: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, Any]:
    """``profiles[model][group][feature]`` -> each group's spread and their mean, ``diversity``.

    Only features every model has count (a dataset too short for one model's evaluation is left out for all).
    """
    models = list(profiles)
    groups = {}
    for group in profiles[models[0]]:
        features = set.intersection(*(set(profiles[m][group]) for m in models))
        if not features:
            raise ValueError(f"profile group {group!r} has no feature that every model measured")
        spreads = {f: relative_spread([profiles[m][group][f] for m in models]) for f in sorted(features)}
        groups[group] = {"spread": sum(spreads.values()) / len(spreads), "features": spreads}
    return {"groups": groups, "diversity": sum(g["spread"] for g in groups.values()) / len(groups)}


class MemoryUse:
    """Forward hooks on every Titans memory of ``model`` that record ``||M_t(q) - q||`` per query (``q`` unit)."""

    def __init__(self, model) -> None:
        from forge.models.memory import NeuralMemory

        self.total, self.count, self.pending, self.handles = 0.0, 0, {}, []
        for module in model.modules():
            if isinstance(module, NeuralMemory):
                self.handles.append(module.query_proj.register_forward_hook(self._query(module)))
                self.handles.append(module.out_proj.register_forward_pre_hook(self._read(module)))

    def _query(self, memory):
        def hook(_, __, output):
            self.pending[id(memory)] = F.normalize(output, dim=-1)  # as NeuralMemory.forward normalises it
        return hook

    def _read(self, memory):
        def hook(_, args):
            query = self.pending.pop(id(memory))
            change = (args[0] - query).float().norm(dim=-1)
            self.total += float(change.sum())
            self.count += change.numel()
        return hook

    def mean(self) -> float:
        if not self.count:
            raise ValueError("the model has no Titans memory to measure")
        return self.total / self.count

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@torch.no_grad()
def measure_profile(model, dataset_blocks: Mapping[str, torch.Tensor], probe: torch.Tensor,
                    micro_batch: int = 4) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """One model's profile (see the module doc) and its raw figures: perplexity per dataset on
    ``dataset_blocks``, and halting steps, memory use and one forward's latency on ``probe`` (one thread;
    the latency of a single call, so :func:`behaviour_profiles` takes the minimum over rounds)."""
    model.eval()
    perplexity = {name: evaluate_lm(model, blocks, micro_batch, torch.device("cpu"))["val/perplexity"]
                  for name, blocks in dataset_blocks.items()}
    hooks = MemoryUse(model)
    try:
        out = model(input_ids=probe)
        memory = hooks.mean()
    finally:
        hooks.remove()
    profile = {"heldout_perplexity": perplexity, "halting_steps": {"mean": float(out.halting_steps)},
               "memory_use": {"read_change": memory}}
    return profile, {"halting_steps": float(out.halting_steps), "memory_read_change": memory}


@torch.no_grad()
def behaviour_profiles(models: Mapping[str, Any], dataset_blocks: Mapping[str, torch.Tensor], probe: torch.Tensor,
                       repeats: int = 5) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, dict[str, float]]]:
    """Every model's profile and figures (halting steps, memory read change, forward_ms, tokens_per_s).

    Latency is the minimum over ``repeats`` rounds that time the models in turn, on one thread: timing them one
    after another lets a burst of load on a shared machine land on a single model.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        profiles, figures = {}, {}
        for name, model in models.items():
            profiles[name], figures[name] = measure_profile(model, dataset_blocks, probe)
            figures[name].update(forward_ms=math.inf, ltm_slots=model.config.ltm_slots,
                                 act_threshold=model.config.act_threshold)
        for _ in range(repeats):
            for name, model in models.items():
                start = time.perf_counter()
                model(input_ids=probe)
                figures[name]["forward_ms"] = min(figures[name]["forward_ms"], (time.perf_counter() - start) * 1000)
    finally:
        torch.set_num_threads(threads)
    for name in models:
        figures[name]["tokens_per_s"] = probe.numel() / (figures[name]["forward_ms"] / 1000)
        profiles[name]["speed"] = {"tokens_per_s": figures[name]["tokens_per_s"]}
    return profiles, figures
