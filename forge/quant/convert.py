"""Find, swap and pack the linear layers of any PyTorch model."""
from __future__ import annotations

import fnmatch
import re
from collections import OrderedDict
from typing import Iterable, Sequence

import torch
import torch.nn as nn

from forge.quant.bitlinear import BitLinear, TernaryLinear

_BLOCK = re.compile(r"^(.*?\.\d+)\.")  # first numbered container in a name: "model.layers.3."


def matches(name: str, patterns: Iterable[str]) -> bool:
    """True when a pattern matches ``name`` or one of its dotted suffixes ("lm_head", "layers.0.*")."""
    parts = name.split(".")
    suffixes = [".".join(parts[i:]) for i in range(len(parts))]
    return any(fnmatch.fnmatchcase(s, p) for p in patterns for s in suffixes)


def head_names(model: nn.Module) -> set[str]:
    """Names of the output head (and any module sharing its weight): always kept in float."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        return set()
    return {name for name, module in model.named_modules()
            if module is head or getattr(module, "weight", None) is head.weight}


def block_of(name: str) -> str | None:
    """The transformer block a module belongs to ("model.layers.3"), or None outside any block."""
    found = _BLOCK.match(name)
    return found.group(1) if found else None


def edge_block_patterns(model: nn.Module) -> tuple[str, ...]:
    """Patterns for the first and the last numbered block holding linear layers."""
    blocks = list(OrderedDict.fromkeys(
        b for n, m in model.named_modules() if isinstance(m, nn.Linear) and (b := block_of(n))))
    return tuple(f"{b}.*" for b in {blocks[0], blocks[-1]}) if blocks else ()


def quantizable_linears(model: nn.Module, preserve: Sequence[str] = (), min_out_features: int = 1) -> list[str]:
    """Float ``nn.Linear`` layers to ternarise: all but the head, narrow ones and those matching ``preserve``."""
    keep = head_names(model)
    return [name for name, module in model.named_modules()
            if type(module) is nn.Linear and name not in keep and module.out_features >= min_out_features
            and not matches(name, preserve)]


def layer_groups(names: Sequence[str]) -> "OrderedDict[str, list[str]]":
    """Group layer names by transformer block (a layer outside any block is its own group)."""
    groups: OrderedDict[str, list[str]] = OrderedDict()
    for name in names:
        groups.setdefault(block_of(name) or name, []).append(name)
    return groups


def swap_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at ``name`` and return the module it replaced."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old


def to_bitlinear(model: nn.Module, names: Sequence[str], zero_threshold: float = 0.5) -> dict[str, nn.Linear]:
    """Replace the named ``nn.Linear`` layers by BitLinear (sharing parameters); returns the originals."""
    originals = {}
    for name in names:
        linear = model.get_submodule(name)
        if type(linear) is not nn.Linear:
            raise TypeError(f"{name} is a {type(linear).__name__}, not a float nn.Linear: it cannot be ternarised")
        originals[name] = swap_module(model, name, BitLinear.from_linear(linear, zero_threshold))
    return originals


def restore(model: nn.Module, originals: dict[str, nn.Module]) -> None:
    """Undo :func:`to_bitlinear` for the given layers."""
    for name, module in originals.items():
        swap_module(model, name, module)


def ternary_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every BitLinear or TernaryLinear in ``model`` by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (BitLinear, TernaryLinear))}


@torch.no_grad()
def pack_model(model: nn.Module) -> list[str]:
    """Replace every BitLinear by a packed TernaryLinear and record them in the HF quantization config."""
    from forge.quant.hf_integration import ForgeBitNetConfig

    names = []
    for name, module in list(model.named_modules()):
        if isinstance(module, BitLinear):
            swap_module(model, name, TernaryLinear.from_bitlinear(module))
            names.append(name)
    if hasattr(model, "config"):
        previous = getattr(model.config, "quantization_config", None)
        earlier = list(getattr(previous, "quantized_modules", None) or [])
        model.config.quantization_config = ForgeBitNetConfig(quantized_modules=sorted(set(earlier + names)))
    return names


@torch.no_grad()
def ternary_stats(model: nn.Module) -> dict[str, float]:
    """Counts over the ternary layers: weights, zero fraction (sparsity), and -1/0/1 check."""
    total = zeros = 0
    only_ternary = True
    for module in ternary_layers(model).values():
        ternary = module.ternary()[0] if isinstance(module, BitLinear) else module.ternary_weight()
        only_ternary &= bool(((ternary == -1) | (ternary == 0) | (ternary == 1)).all())
        total += ternary.numel()
        zeros += int((ternary == 0).sum())
    return {"ternary_layers": len(ternary_layers(model)), "ternary_weights": total,
            "sparsity": zeros / total if total else 0.0, "only_ternary_values": only_ternary}


@torch.no_grad()
def dequantize_model(model: nn.Module) -> list[str]:
    """Replace every TernaryLinear by a float ``nn.Linear`` with weight ``ternary * scale`` and the same bias.

    The weights keep their ternary values exactly, now trainable, so full training and LoRA baking work on
    the model. Lost: the 8-bit per-token activation quantization TernaryLinear applies to its input (outputs
    move by that rounding), the 1.6-bit packing (weights take a float each again) and the int8 kernel. The
    model's ``quantization_config`` is dropped so that it saves and loads as a plain float model. Returns
    the names of the layers replaced.
    """
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    dtype = embedding.weight.dtype if embedding is not None else torch.float32
    names = []
    for name, module in list(model.named_modules()):
        if isinstance(module, TernaryLinear):
            linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                               device=module.weight_packed.device, dtype=dtype)
            linear.weight.copy_(module.ternary_weight().to(torch.float32) * module.weight_scale)
            if module.bias is not None:
                linear.bias.copy_(module.bias)
            swap_module(model, name, linear)
            names.append(name)
    if getattr(model, "hf_quantizer", None) is not None:
        # Loaded by from_pretrained: drop the quantizer, the config entry and the is_quantized flags, or
        # transformers would save (and peft would treat) the model as a quantized one.
        model.hf_quantizer.remove_quantization_config(model)
        for module in model.modules():
            if hasattr(getattr(module, "config", None), "_is_quantized"):
                del module.config._is_quantized
    elif names and hasattr(getattr(model, "config", None), "quantization_config"):
        del model.config.quantization_config  # packed in memory by pack_model
    return names
