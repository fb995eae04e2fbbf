"""Merge techniques on state dicts of one architecture: one small function each, behind a registry.

Two kinds of method:
- per-tensor (linear, SLERP, task arithmetic, TIES, DARE): ``fn(tensors, base, **params) -> tensor`` is
  applied to every floating-point tensor. Arithmetic runs in float32 (float64 for float64 inputs) and the
  result takes the input dtype. Definitions and defaults follow mergekit (``dare`` is its ``dare_linear``;
  DARE's default rescale is the paper's 1/density, ``rescale="l1"`` is mergekit's), so the same
  configuration gives the same tensors (checked by ``benchmarks/scripts/mergekit_agreement.py``).
- layer-wise (FrankenMerge, DFS): ``fn(state_dicts, base, **params) -> state dict`` moves whole decoder
  layers, found from parameter names (see ``forge.merge.layers``).

``merge(method, state_dicts, base=..., **params)`` checks the inputs and dispatches.
"""
from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from forge.merge.layers import LayerLayout, infer_layer_layout

StateDict = dict[str, torch.Tensor]

# Module names whose output is added to the residual stream: attention and MLP output projections in
# Llama/Cognate (o_proj, down_proj), GPT-2 (c_proj), GPT-NeoX (dense_4h_to_h), fc2. DFS scales these to
# scale a layer's contribution. Not "out_proj": Cognate's memory.out_proj feeds a gate, not the stream.
RESIDUAL_OUTPUT_MODULES = ("o_proj", "down_proj", "c_proj", "fc2", "dense_4h_to_h")


class MergeError(ValueError):
    """The inputs cannot be merged as asked (mismatched architectures, bad parameters)."""


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge technique."""

    name: str  # registry key, used on the command line
    fn: Callable  # the technique; signature depends on ``per_tensor``
    per_tensor: bool  # True: fn(tensors, base, **params) per floating tensor; False: fn(state_dicts, base, **params)
    needs_base: bool  # the technique works on deltas from a base model
    min_models: int  # fewest models (not counting the base)
    max_models: int | None  # most models, None for any number
    seeded: bool  # draws random numbers: merge() passes a per-tensor torch.Generator

    @property
    def parameters(self) -> dict[str, object]:
        """Tunable parameters and their defaults (``inspect.Parameter.empty`` when required)."""
        skip = {"tensors", "state_dicts", "base", "generator"}
        return {p.name: p.default for p in inspect.signature(self.fn).parameters.values() if p.name not in skip}

    @property
    def summary(self) -> str:
        return (self.fn.__doc__ or "").strip().splitlines()[0]


MERGE_METHODS: dict[str, MergeMethod] = {}


def register(name: str, *, per_tensor: bool, needs_base: bool = False, min_models: int = 2,
             max_models: int | None = None, seeded: bool = False) -> Callable[[Callable], Callable]:
    def decorate(fn: Callable) -> Callable:
        if name in MERGE_METHODS:
            raise ValueError(f"merge method {name!r} is registered twice")
        MERGE_METHODS[name] = MergeMethod(name, fn, per_tensor, needs_base, min_models, max_models, seeded)
        return fn

    return decorate


# ----------------------------------------------------------------------------------------------- helpers

def _work_dtype(tensor: torch.Tensor) -> torch.dtype:
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def _weights(weights: Sequence[float] | None, count: int) -> list[float]:
    if weights is None:
        return [1.0] * count
    weights = [float(w) for w in weights]
    if len(weights) != count:
        raise MergeError(f"got {len(weights)} weights for {count} models; give one weight per model")
    return weights


def _check_density(density: float) -> float:
    if not 0.0 < float(density) <= 1.0:
        raise MergeError(f"density must be in (0, 1] (fraction of each task vector kept), got {density}")
    return float(density)


def _combine_task_vectors(deltas: torch.Tensor, base: torch.Tensor, weights: Sequence[float], *,
                          sign_consensus: bool, normalize: bool, scale: float) -> torch.Tensor:
    """base + scale * (weighted sum of deltas [n, ...]), optionally TIES sign election and normalization."""
    w = torch.tensor(weights, dtype=deltas.dtype).reshape(-1, *([1] * (deltas.dim() - 1)))
    deltas = deltas * w
    if sign_consensus:
        # Elect each coordinate's sign from the summed (weighted) deltas; keep only agreeing entries.
        majority = torch.where(deltas.sum(dim=0) >= 0, 1.0, -1.0).to(deltas.dtype)
        agree = deltas.sign() == majority
        mixed = (deltas * agree).sum(dim=0)
        divisor = (w * agree).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = deltas.sum(dim=0)
        divisor = w.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if normalize:
        mixed = mixed / divisor
    return base + scale * mixed


def _task_vectors(tensors: Sequence[torch.Tensor], base: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = _work_dtype(base)
    base_w = base.to(dtype)
    return torch.stack([t.to(dtype) - base_w for t in tensors]), base_w


# Elements per partial reduction in SLERP. One float32 reduction over millions of elements loses ~1e-4
# relative accuracy (a 4M-entry embedding's norm was off by 9e-5); chunking keeps it near 1e-6, as mergekit does.
_REDUCTION_CHUNK = 1 << 20


def _slerp_pair(a: torch.Tensor, b: torch.Tensor, t: float, dot_threshold: float, eps: float) -> torch.Tensor:
    """Spherical interpolation from ``a`` (t=0) to ``b`` (t=1) treating each tensor as one vector."""
    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    if not flat_a.numel():
        return (1 - t) * a + t * b
    chunks = range(0, flat_a.numel(), _REDUCTION_CHUNK)
    norm_a = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(flat_a[i:i + _REDUCTION_CHUNK])
                                                   for i in chunks]))
    norm_b = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(flat_b[i:i + _REDUCTION_CHUNK])
                                                   for i in chunks]))
    norm_a = norm_a if norm_a > eps else torch.ones_like(norm_a)
    norm_b = norm_b if norm_b > eps else torch.ones_like(norm_b)
    dot = torch.stack([((flat_a[i:i + _REDUCTION_CHUNK] / norm_a) * (flat_b[i:i + _REDUCTION_CHUNK] / norm_b)).sum()
                       for i in chunks]).sum().clamp(-1, 1)
    if dot.abs() > dot_threshold:  # (anti)parallel: the arc is degenerate, interpolate linearly
        return (1 - t) * a + t * b
    theta = torch.acos(dot)
    sin_theta = torch.sin(theta)
    return (torch.sin((1 - t) * theta) / sin_theta) * a + (torch.sin(t * theta) / sin_theta) * b


# --------------------------------------------------------------------------------- per-tensor methods

@register("linear", per_tensor=True)
def linear(tensors: Sequence[torch.Tensor], base: torch.Tensor | None = None, *,
           weights: Sequence[float] | None = None, normalize: bool = True) -> torch.Tensor:
    """Weighted average: sum(w_i * theta_i) / sum(w_i) (plain weighted sum when normalize=False)."""
    w = _weights(weights, len(tensors))
    if normalize and sum(w) == 0:
        raise MergeError("linear weights sum to 0; they cannot be normalized")
    dtype = _work_dtype(tensors[0])
    result = torch.zeros_like(tensors[0], dtype=dtype)
    for tensor, weight in zip(tensors, w):
        result.add_(tensor.to(dtype), alpha=weight)
    return result / sum(w) if normalize else result


@register("slerp", per_tensor=True)
def slerp(tensors: Sequence[torch.Tensor], base: torch.Tensor | None = None, *, t: float | None = None,
          weights: Sequence[float] | None = None, dot_threshold: float = 0.9995, eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation per tensor (linear for near-parallel tensors); t for two models, else weights.

    Two models: the point at fraction ``t`` of the arc from the first to the second (as mergekit).
    More models: folded in one at a time, model k at fraction w_k / (w_0 + ... + w_k) of the arc from the
    running result, which gives every model its weight's share the way a running mean does.
    """
    if t is not None:
        if len(tensors) != 2 or weights is not None:
            raise MergeError("slerp's t is for exactly two models; for more, give weights")
        w = [1.0 - float(t), float(t)]
    else:
        w = _weights(weights, len(tensors))
    if min(w) < 0 or sum(w) <= 0:
        raise MergeError(f"slerp needs weights >= 0 with a positive sum (t in [0, 1]), got {w}")
    dtype = _work_dtype(tensors[0])
    result = tensors[0].to(dtype)
    total = w[0]
    for tensor, weight in zip(tensors[1:], w[1:]):
        total += weight
        fraction = weight / total if total > 0 else 0.0
        result = _slerp_pair(result, tensor.to(dtype), fraction, dot_threshold, eps)
    return result


@register("task_arithmetic", per_tensor=True, needs_base=True, min_models=1)
def task_arithmetic(tensors: Sequence[torch.Tensor], base: torch.Tensor, *, weights: Sequence[float] | None = None,
                    scale: float = 1.0, normalize: bool = False) -> torch.Tensor:
    """base + scale * sum(w_i * (theta_i - base)): adds the models' task vectors to the base."""
    deltas, base_w = _task_vectors(tensors, base)
    return _combine_task_vectors(deltas, base_w, _weights(weights, len(tensors)), sign_consensus=False,
                                 normalize=normalize, scale=scale)


def trim_to_density(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``density`` fraction of entries largest in magnitude (at least one), zero the rest."""
    if density >= 1:
        return delta
    k = max(1, int(density * delta.numel()))
    keep = torch.argsort(delta.abs().reshape(-1).float(), descending=True)[:k]
    mask = torch.zeros(delta.numel(), dtype=delta.dtype)
    mask[keep] = 1
    return delta * mask.reshape(delta.shape)


@register("ties", per_tensor=True, needs_base=True, min_models=1)
def ties(tensors: Sequence[torch.Tensor], base: torch.Tensor, *, density: float = 0.5,
         weights: Sequence[float] | None = None, scale: float = 1.0, normalize: bool = True) -> torch.Tensor:
    """TIES: trim each task vector to density, elect each entry's sign, average the agreeing entries."""
    density = _check_density(density)
    deltas, base_w = _task_vectors(tensors, base)
    deltas = torch.stack([trim_to_density(d, density) for d in deltas])
    return _combine_task_vectors(deltas, base_w, _weights(weights, len(tensors)), sign_consensus=True,
                                 normalize=normalize, scale=scale)


DARE_RESCALES = ("inverse", "l1", "none")


def drop_and_rescale(delta: torch.Tensor, density: float, generator: torch.Generator, rescale: str) -> torch.Tensor:
    """Keep each entry with probability ``density`` (drop with p = 1 - density), then rescale the survivors.

    rescale: "inverse" multiplies by 1/density (the DARE paper; unbiased), "l1" restores the L1 norm of
    ``delta`` (mergekit's choice), "none" leaves them.
    """
    if rescale not in DARE_RESCALES:
        raise MergeError(f"DARE rescale must be one of {DARE_RESCALES}, got {rescale!r}")
    if density >= 1:
        return delta
    mask = torch.bernoulli(torch.full_like(delta, density, dtype=torch.float32), generator=generator)
    kept = delta * mask.to(delta.dtype)
    if rescale == "inverse":
        return kept / density
    if rescale == "l1":
        before, after = delta.abs().sum(), kept.abs().sum()
        if before < 1e-7 or after < 1e-7:
            return kept
        return kept * (before / after)
    return kept


@register("dare", per_tensor=True, needs_base=True, min_models=1, seeded=True)
def dare(tensors: Sequence[torch.Tensor], base: torch.Tensor, *, generator: torch.Generator, density: float = 0.5,
         rescale: str = "inverse", weights: Sequence[float] | None = None, scale: float = 1.0,
         normalize: bool = False) -> torch.Tensor:
    """DARE: drop task-vector entries with probability 1 - density, rescale, add to the base (seeded)."""
    density = _check_density(density)
    deltas, base_w = _task_vectors(tensors, base)
    deltas = torch.stack([drop_and_rescale(d, density, generator, rescale) for d in deltas])
    return _combine_task_vectors(deltas, base_w, _weights(weights, len(tensors)), sign_consensus=False,
                                 normalize=normalize, scale=scale)


# ---------------------------------------------------------------------------------- layer-wise methods

def _layout(state_dicts: Sequence[Mapping[str, torch.Tensor]], layer_prefix: str | None) -> LayerLayout:
    return infer_layer_layout(state_dicts[0].keys(), layer_prefix)


def _non_layer_tensors(layout: LayerLayout, source: Mapping[str, torch.Tensor]) -> StateDict:
    return {key: source[key].clone() for key in layout.other_keys}


@register("frankenmerge", per_tensor=False)
def frankenmerge(state_dicts: Sequence[Mapping[str, torch.Tensor]], base: Mapping[str, torch.Tensor] | None = None, *,
                 pattern: Sequence[int] | None = None, layer_prefix: str | None = None) -> StateDict:
    """Layer i comes from model pattern[i % len(pattern)] (same depth); other tensors from base or model 0.

    Default pattern: layer i from model i % n (alternating parents).
    """
    layout = _layout(state_dicts, layer_prefix)
    pattern = list(range(min(len(state_dicts), layout.num_layers))) if pattern is None else [int(p) for p in pattern]
    if not pattern or len(pattern) > layout.num_layers:
        raise MergeError(f"frankenmerge pattern needs 1..{layout.num_layers} entries (one model index per layer, "
                         f"repeated), got {pattern}")
    if any(not 0 <= p < len(state_dicts) for p in pattern):
        raise MergeError(f"frankenmerge pattern {pattern} names a model outside 0..{len(state_dicts) - 1}")
    merged = _non_layer_tensors(layout, base if base is not None else state_dicts[0])
    for layer in range(layout.num_layers):
        source = state_dicts[pattern[layer % len(pattern)]]
        for key in layout.layer_keys(layer):
            merged[key] = source[key].clone()
    return merged


def _module_name(suffix: str) -> str:
    """'self_attn.o_proj.weight' -> 'o_proj'."""
    return suffix.rsplit(".", 2)[-2] if suffix.count(".") else ""


@register("dfs", per_tensor=False)
def dfs(state_dicts: Sequence[Mapping[str, torch.Tensor]], base: Mapping[str, torch.Tensor] | None = None, *,
        path: Sequence[tuple[int, int]] | None = None, scales: Sequence[float] | None = None,
        layer_prefix: str | None = None, residual_outputs: Sequence[str] = RESIDUAL_OUTPUT_MODULES) -> StateDict:
    """Data-flow-space merge: position i runs layer path[i] = (model, layer), its residual output times scales[i].

    As in Sakana's evolutionary model merge, any layer of any model may sit at any position of the
    inference path (layers may repeat or change depth); the path keeps the architecture's depth so the
    result loads into the same model class. The per-position scale multiplies the layer's residual-branch
    output projections (modules named in ``residual_outputs``), i.e. how much that layer writes to the
    residual stream. Default path: layer i of model i % n, scale 1. Tensors outside the layers come from
    base or model 0.
    """
    layout = _layout(state_dicts, layer_prefix)
    n_layers = layout.num_layers
    if path is None:
        path = [(i % len(state_dicts), i) for i in range(n_layers)]
    path = [(int(m), int(layer)) for m, layer in path]
    scales = [1.0] * n_layers if scales is None else [float(s) for s in scales]
    if len(path) != n_layers or len(scales) != n_layers:
        raise MergeError(f"dfs needs one (model, layer) and one scale per position: {n_layers} positions, "
                         f"got {len(path)} path entries and {len(scales)} scales")
    merged = _non_layer_tensors(layout, base if base is not None else state_dicts[0])
    for position, ((model, layer), scale) in enumerate(zip(path, scales)):
        if not (0 <= model < len(state_dicts) and 0 <= layer < n_layers):
            raise MergeError(f"dfs path entry {position} = ({model}, {layer}) is outside "
                             f"{len(state_dicts)} models x {n_layers} layers")
        if set(layout.layer_suffixes[layer]) != set(layout.layer_suffixes[position]):
            raise MergeError(f"dfs cannot place layer {layer} at position {position}: their parameters differ")
        outputs = [s for s in layout.layer_suffixes[layer] if _module_name(s) in residual_outputs]
        if scale != 1.0 and not outputs:
            raise MergeError(f"dfs cannot scale layer {layer}: none of its modules is a residual output projection "
                             f"({', '.join(residual_outputs)}); pass residual_outputs=... naming them")
        for suffix in layout.layer_suffixes[layer]:
            tensor = state_dicts[model][layout.key(layer, suffix)]
            slot = state_dicts[0][layout.key(position, suffix)]
            if tensor.shape != slot.shape:
                raise MergeError(f"dfs cannot place layer {layer} at position {position}: {suffix} has shape "
                                 f"{tuple(tensor.shape)} there but {tuple(slot.shape)} here")
            if suffix in outputs and scale != 1.0:
                merged[layout.key(position, suffix)] = (tensor.to(_work_dtype(tensor)) * scale).to(tensor.dtype)
            else:
                merged[layout.key(position, suffix)] = tensor.clone()
    return merged


# ------------------------------------------------------------------------------------------- dispatch

def tensor_seed(seed: int, name: str) -> int:
    """The seed of a seeded method's generator for tensor ``name``: fixed by (seed, name), not by order."""
    return int.from_bytes(hashlib.sha256(f"{int(seed)}:{name}".encode()).digest()[:8], "little") >> 1


def check_compatible(state_dicts: Sequence[Mapping[str, torch.Tensor]]) -> None:
    """Raise MergeError unless all state dicts have the same parameter names and shapes."""
    first = state_dicts[0]
    for index, other in enumerate(state_dicts[1:], start=1):
        missing, extra = sorted(set(first) - set(other)), sorted(set(other) - set(first))
        if missing or extra:
            raise MergeError(f"model {index} has a different architecture from model 0: missing {missing[:5]}, "
                             f"extra {extra[:5]}. Merge only models of one architecture.")
        for key, tensor in first.items():
            if tensor.shape != other[key].shape:
                vocab = (any(word in key for word in ("embed", "wte", "lm_head", "vocab"))
                         and tensor.shape[1:] == other[key].shape[1:])  # only the token axis differs
                what = "vocabularies" if vocab else "architectures"
                raise MergeError(f"models 0 and {index} have different {what}: {key} is {tuple(tensor.shape)} vs "
                                 f"{tuple(other[key].shape)}. Merge only models with the same config and tokenizer.")


def merge(method: str, state_dicts: Sequence[Mapping[str, torch.Tensor]], *,
          base: Mapping[str, torch.Tensor] | None = None, seed: int = 0, **params) -> StateDict:
    """Merge ``state_dicts`` (one architecture) with the registered ``method`` and its ``params``.

    ``seed`` fixes the random draws of seeded methods (DARE); each tensor gets its own generator from
    (seed, name), so results do not depend on tensor order. Tensors that alias each other in every input
    (tied embeddings) are merged once and stay identical.
    """
    if method not in MERGE_METHODS:
        raise MergeError(f"unknown merge method {method!r}; choose one of {', '.join(sorted(MERGE_METHODS))}")
    spec = MERGE_METHODS[method]
    if len(state_dicts) < spec.min_models or (spec.max_models is not None and len(state_dicts) > spec.max_models):
        most = "any number of" if spec.max_models is None else f"at most {spec.max_models}"
        raise MergeError(f"{method} needs at least {spec.min_models} and {most} models, got {len(state_dicts)}")
    if spec.needs_base and base is None:
        raise MergeError(f"{method} works on task vectors and needs a base model (--base DIR / base=...)")
    unknown = sorted(set(params) - set(spec.parameters))
    if unknown:
        raise MergeError(f"{method} has no parameter(s) {unknown}; its parameters are {sorted(spec.parameters)}")
    check_compatible(list(state_dicts) + ([base] if base is not None else []))
    if not spec.per_tensor:
        return spec.fn(state_dicts, base, **params)

    merged: StateDict = {}
    done: dict[tuple, torch.Tensor] = {}
    for key, first in state_dicts[0].items():
        inputs = [sd[key] for sd in state_dicts]
        base_tensor = base[key] if base is not None else None
        if not first.is_floating_point():  # integer buffers (ids, masks) are not averaged
            merged[key] = (base_tensor if base_tensor is not None else first).clone()
            continue
        alias = tuple((t.data_ptr(), t.shape, t.stride()) for t in inputs + ([base_tensor] if base is not None else []))
        if first.numel() and alias in done:
            merged[key] = done[alias]
            continue
        kwargs = dict(params)
        if spec.seeded:
            kwargs["generator"] = torch.Generator().manual_seed(tensor_seed(seed, key))
        result = spec.fn(inputs, base_tensor, **kwargs)
        merged[key] = done[alias] = result.to(first.dtype if base_tensor is None else base_tensor.dtype)
    return merged
