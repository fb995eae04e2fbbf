"""EvoMerge's eight binary combos and the weight-space diversity of a population.

A combo applies three choices in sequence to the parents (spec, Phase 2, generation 0):
``(linear | SLERP) -> (TIES | DARE) -> (FrankenMerge | DFS)``. ``combo_id`` 0..7 read as three bits,
left to right in that order: 0 = ``000`` = linear -> TIES -> FrankenMerge, 7 = ``111`` = SLERP -> DARE -> DFS.

"In sequence", for N parents (three in the pipeline), means each stage refines the previous stage's model
with the parents again, so that every stage changes the result:
1. interpolation: ``m1 = linear|slerp(parents, weights)``.
2. task vectors: ``m2 = ties|dare(parents, base=m1)``: each parent's difference from ``m1`` is trimmed (TIES)
   or randomly dropped and rescaled (DARE), the survivors are averaged (TIES: only sign-agreeing ones) and
   added back to ``m1`` times ``task_scale``. With independently trained parents there is no shared
   pretrained base, so the stage-1 merge serves as the base of the task vectors.
3. layers: FrankenMerge or DFS over the sources ``[m2, parent_1, ..., parent_N]``: each layer position takes
   a layer from one source (DFS: any layer of it, with a residual scale); embeddings, final norm and head
   come from ``m2``.
"""
from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from forge.merge.layers import infer_layer_layout
from forge.merge.methods import MergeError, StateDict, check_compatible, merge

COMBO_STAGES = (("linear", "slerp"), ("ties", "dare"), ("frankenmerge", "dfs"))
NUM_COMBOS = 2 ** len(COMBO_STAGES)


def combo_methods(combo_id: int) -> tuple[str, str, str]:
    """The three methods of ``combo_id`` (0..7), e.g. 5 = 0b101 -> ("slerp", "ties", "dfs")."""
    if not 0 <= int(combo_id) < NUM_COMBOS:
        raise MergeError(f"combo_id must be in 0..{NUM_COMBOS - 1}, got {combo_id}")
    bits = f"{int(combo_id):03b}"
    return tuple(choices[int(bit)] for choices, bit in zip(COMBO_STAGES, bits))  # type: ignore[return-value]


@dataclass(frozen=True)
class ComboParams:
    """The continuous and per-layer genome of one combo; each stage reads only the fields of its method."""

    weights: tuple[float, ...] | None = None  # stage 1: parent weights of linear/SLERP (None: equal)
    density: float = 0.5  # stage 2: fraction of each task vector TIES keeps (by magnitude) / DARE keeps (at random)
    task_scale: float = 1.0  # stage 2: factor on the merged task vector added back to the stage-1 model
    layer_sources: tuple[int, ...] | None = None  # stage 3: source per layer position, 0 = stage-2 model, k = parent k
    layer_indices: tuple[int, ...] | None = None  # stage 3, DFS: which layer of its source each position runs
    layer_scales: tuple[float, ...] | None = None  # stage 3, DFS: residual-output scale per position (None: all 1)


def apply_combo(parents: Sequence[Mapping[str, torch.Tensor]], combo_id: int, params: ComboParams | None = None,
                seed: int = 0) -> StateDict:
    """Merge ``parents`` with combo ``combo_id`` (see module docstring); returns a new state dict.

    ``seed`` drives DARE's masks and any stage-3 choice that ``params`` leaves as None: layer sources
    uniformly from [stage-2 model, parents...]; DFS layer indices within one of each position; so the
    same (combo_id, params, seed) always gives the same model.
    """
    if len(parents) < 2:
        raise MergeError(f"a combo merges at least two parents, got {len(parents)}")
    params = params or ComboParams()
    interpolation, task_method, layer_method = combo_methods(combo_id)
    stage1 = merge(interpolation, parents, weights=params.weights)
    stage2 = merge(task_method, parents, base=stage1, density=params.density, scale=params.task_scale,
                   normalize=True, seed=seed)
    sources = [stage2, *parents]
    num_layers = infer_layer_layout(stage2.keys()).num_layers
    rng = random.Random(f"{seed}:{layer_method}")
    layer_sources = params.layer_sources or tuple(rng.randrange(len(sources)) for _ in range(num_layers))
    if layer_method == "frankenmerge":
        return merge("frankenmerge", sources, base=stage2, pattern=layer_sources)
    layer_indices = params.layer_indices or tuple(
        min(num_layers - 1, max(0, i + rng.choice((-1, 0, 1)))) for i in range(num_layers))
    return merge("dfs", sources, base=stage2, path=list(zip(layer_sources, layer_indices)),
                 scales=params.layer_scales)


def weight_space_diversity(state_dicts: Sequence[Mapping[str, torch.Tensor]]) -> float:
    """Mean over pairs of ||a - b|| / sqrt(||a||^2 + ||b||^2) over all floating-point weights.

    0 means identical models; 1 means as far apart as two orthogonal weight vectors of equal norm
    (e.g. independent random initialisations); the maximum, sqrt(2), is b = -a. Scale-free, so one
    threshold (the spec's 0.25 / 0.3) works for any model size. Tied (aliased) tensors count once.
    """
    if len(state_dicts) < 2:
        raise ValueError(f"diversity needs at least two models, got {len(state_dicts)}")
    check_compatible(state_dicts)
    n = len(state_dicts)
    gram = torch.zeros(n, n, dtype=torch.float64)
    seen: set[tuple] = set()
    for key, tensor in state_dicts[0].items():
        if not tensor.is_floating_point():
            continue
        alias = (tensor.data_ptr(), tensor.shape, tensor.stride())
        if tensor.numel() and alias in seen:
            continue
        seen.add(alias)
        stacked = torch.stack([sd[key].reshape(-1).to(torch.float64) for sd in state_dicts])
        gram += stacked @ stacked.T
    squared_norms = gram.diagonal()
    ratios = []
    for i, j in itertools.combinations(range(n), 2):
        denominator = squared_norms[i] + squared_norms[j]
        distance_sq = (squared_norms[i] + squared_norms[j] - 2 * gram[i, j]).clamp_min(0)
        ratios.append(0.0 if denominator == 0 else float((distance_sq / denominator).sqrt()))
    return sum(ratios) / len(ratios)
