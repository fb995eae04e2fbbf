"""Size, sparsity and speed measurements of ternary models (no timing in tests: scripts report them)."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from forge.quant.bitlinear import BitLinear, TernaryLinear
from forge.quant.int4 import Int4Embedding, Int4Linear
from forge.quant.int8 import Int8Embedding, Int8Linear


def weight_file_bytes(model_dir: Path) -> int:
    """Bytes of the weight files (``*.safetensors``) of a model directory."""
    files = list(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir} holds no *.safetensors weight file")
    return sum(f.stat().st_size for f in files)


def saved_weight_bytes(model: nn.Module) -> int:
    """Bytes of the weight files ``model.save_pretrained`` writes (to a temporary directory, then removed)."""
    with tempfile.TemporaryDirectory(prefix="forge-size-") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        return weight_file_bytes(Path(tmp))


def ternary_layer_bytes(model: nn.Module) -> dict[str, int]:
    """Stored bytes of the ternary layers' weights against float32 and float16 of the same weights."""
    stored = weights = 0
    for module in model.modules():
        if isinstance(module, TernaryLinear):
            stored += module.weight_packed.numel() + module.weight_scale.numel() * 4
            weights += module.in_features * module.out_features
        elif isinstance(module, BitLinear):
            raise ValueError("the model still has BitLinear layers: pack it (forge.quant.pack_model) first")
    return {"ternary_weights": weights, "packed_bytes": stored, "float32_bytes": 4 * weights,
            "float16_bytes": 2 * weights}


def int8_layer_bytes(model: nn.Module) -> dict[str, int]:
    """Stored bytes of the int8-row layers (a matrix shared by a tied head counted once) against float32."""
    seen, weights, stored = set(), 0, 0
    for module in model.modules():
        if isinstance(module, (Int8Embedding, Int8Linear)):
            if id(module.weight) not in seen:
                seen.add(id(module.weight))
                weights += module.weight.numel()
                stored += module.weight.numel()
            stored += module.weight_scale.numel() * 4
    return {"int8_weights": weights, "stored_bytes": stored, "float32_bytes": 4 * weights}


def int4_layer_bytes(model: nn.Module) -> dict[str, int]:
    """Stored bytes of the int4 layers (a matrix shared by a tied head counted once) against float32."""
    seen, weights, stored = set(), 0, 0
    for module in model.modules():
        if isinstance(module, (Int4Embedding, Int4Linear)):
            if id(module.weight) not in seen:
                seen.add(id(module.weight))
                weights += module.weight.shape[0] * (module.embedding_dim if isinstance(module, Int4Embedding)
                                                     else module.in_features)
                stored += module.weight.numel()
            stored += module.weight_scale.numel() * module.weight_scale.element_size()
    return {"int4_weights": weights, "stored_bytes": stored, "float32_bytes": 4 * weights}


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU kernels: without it a CUDA timing measures only the kernel launches."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def forward_latency(model: nn.Module, input_ids: torch.Tensor, repeats: int = 10, warmup: int = 2) -> float:
    """Fastest of ``repeats`` forward passes, in seconds (the minimum filters other load on the machine).
    ``input_ids`` move to the model's device first."""
    model.eval()
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    for _ in range(warmup):
        model(input_ids=input_ids)
    best = float("inf")
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        model(input_ids=input_ids)
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


@torch.no_grad()
def time_in_modules(model: nn.Module, names: Sequence[str], input_ids: torch.Tensor, repeats: int = 10,
                    warmup: int = 2) -> float:
    """Seconds spent inside the modules ``names`` (every call, timed by forward hooks) during the fastest of
    ``repeats`` forward passes: the most that replacing them with faster ones can save. The hooks' own cost counts
    as inside, so the figure errs high. None of the modules may hold another (its time would count twice)."""
    model.eval()
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    modules = dict(model.named_modules(remove_duplicate=False))
    unknown = sorted(set(names) - set(modules))
    if unknown:
        raise KeyError(f"time_in_modules: the model has no modules {unknown}")
    inside, started = [0.0], [0.0]

    def enter(_module, _args) -> None:
        _synchronize(device)
        started[0] = time.perf_counter()

    def leave(_module, _args, _output) -> None:
        _synchronize(device)
        inside[0] += time.perf_counter() - started[0]

    timed = {id(modules[name]): modules[name] for name in names}.values()  # a module under two names, once
    nested = sorted(name for name in names if any(inner is not modules[name] and inner in timed
                                                  for inner in modules[name].modules()))
    if nested:
        raise ValueError(f"time_in_modules: {nested} hold other modules it times; time the inner ones only")
    handles = [hook for module in timed for hook in (module.register_forward_pre_hook(enter),
                                                     module.register_forward_hook(leave))]
    try:
        for _ in range(warmup):
            model(input_ids=input_ids)
        best_total, best_inside = float("inf"), 0.0
        for _ in range(repeats):
            inside[0] = 0.0
            _synchronize(device)
            start = time.perf_counter()
            model(input_ids=input_ids)
            _synchronize(device)
            total = time.perf_counter() - start
            if total < best_total:
                best_total, best_inside = total, inside[0]
    finally:
        for handle in handles:
            handle.remove()
    return best_inside


@torch.no_grad()
def linear_latency(layer: nn.Module, x: torch.Tensor, repeats: int = 50, warmup: int = 5) -> float:
    """Fastest of ``repeats`` calls of one layer, in seconds (``x`` moves to the layer's device first)."""
    device = next(layer.parameters()).device
    x = x.to(device)
    for _ in range(warmup):
        layer(x)
    best = float("inf")
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        layer(x)
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best
