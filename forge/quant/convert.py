"""Find, swap and pack the linear layers of any PyTorch model."""
from __future__ import annotations

import fnmatch
import re
from collections import OrderedDict
from typing import Iterable, Sequence

import torch
import torch.nn as nn

from forge.quant.bitlinear import BitLinear, TernaryLinear
from forge.quant.int4 import Int4Embedding, Int4Linear
from forge.quant.int8 import Int8Embedding, Int8Linear

ROW_EMBEDDINGS = (Int8Embedding, Int4Embedding)  # embeddings stored as integer rows
ROW_LAYERS = (Int8Embedding, Int8Linear, Int4Embedding, Int4Linear)  # every integer-row storage layer

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


def int8_candidates(model: nn.Module, min_out_features: int = 1) -> list[str]:
    """What stays out of the ternary layers but can be stored as int8 or int4 rows: the input embedding, and every
    float ``nn.Linear`` (the head, preserved and reverted layers) with at least ``min_out_features`` rows."""
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return [name for name, module in model.named_modules()
            if (module is embedding and type(module) is nn.Embedding)
            or (type(module) is nn.Linear and module.out_features >= min_out_features)]


def to_int8(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    """Replace the named ``nn.Embedding`` / ``nn.Linear`` layers by int8-row storage; returns the originals.

    A linear layer whose weight is an embedding's (a tied head) shares that embedding's int8 matrix.
    """
    return _to_rows(model, names, Int8Embedding.from_embedding,
                    lambda linear, tied: Int8Linear.from_linear(linear, tied=tied), "int8")


def to_int4(model: nn.Module, names: Sequence[str], group_size: int = 32) -> dict[str, nn.Module]:
    """Replace the named ``nn.Embedding`` / ``nn.Linear`` layers by 4-bit groups of ``group_size`` weights
    (``forge.quant.int4``); returns the originals. A tied head shares its embedding's packed matrix."""
    return _to_rows(model, names, lambda embedding: Int4Embedding.from_embedding(embedding, group_size),
                    lambda linear, tied: Int4Linear.from_linear(linear, group_size, tied=tied), "int4")


def _to_rows(model: nn.Module, names: Sequence[str], embedding_rows, linear_rows, kind: str) -> dict[str, nn.Module]:
    modules = {name: model.get_submodule(name) for name in names}
    originals, by_weight = {}, {}
    for name, module in sorted(modules.items(), key=lambda item: type(item[1]) is not nn.Embedding):
        if type(module) is nn.Embedding:
            new = embedding_rows(module)
            by_weight[id(module.weight)] = new
        elif type(module) is nn.Linear:
            new = linear_rows(module, by_weight.get(id(module.weight)))
        else:
            raise TypeError(f"{name} is a {type(module).__name__}: only float nn.Embedding and nn.Linear "
                            f"layers are stored as {kind}")
        originals[name] = swap_module(model, name, new)
    return originals


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
    """Replace every BitLinear by a packed TernaryLinear; record them and the int8 / int4 layers in the HF
    quantization config, so that ``from_pretrained`` rebuilds them. Returns the layers packed now."""
    from forge.quant.hf_integration import ForgeBitNetConfig

    names = []
    for name, module in list(model.named_modules()):
        if isinstance(module, BitLinear):
            swap_module(model, name, TernaryLinear.from_bitlinear(module))
            names.append(name)
    if hasattr(model, "config"):
        ternary = [n for n, m in model.named_modules() if isinstance(m, TernaryLinear)]
        int8 = [n for n, m in model.named_modules(remove_duplicate=False) if isinstance(m, (Int8Embedding, Int8Linear))]
        int4 = {n: m.group_size for n, m in model.named_modules(remove_duplicate=False)
                if isinstance(m, (Int4Embedding, Int4Linear))}
        if len(set(int4.values())) > 1:
            raise ValueError(f"int4 layers with different group sizes {sorted(set(int4.values()))}: the model "
                             "config records one; store every int4 layer with the same group_size")
        model.config.quantization_config = ForgeBitNetConfig(
            quantized_modules=sorted(ternary), int8_modules=sorted(int8), int4_modules=sorted(int4),
            int4_group_size=next(iter(int4.values()), None))
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
    """Replace every TernaryLinear by a float ``nn.Linear`` with weight ``ternary * scale``, and every int8
    or int4 layer by its float form (a tied head shares the new embedding weight again).

    The weights keep their quantized values exactly, now trainable, so full training and LoRA baking work on
    the model. Lost: the 8-bit per-token activation quantization TernaryLinear applies to its input (outputs
    move by that rounding), the 1.6-, 4- and 8-bit storage and the int8 kernel. The model's
    ``quantization_config`` is dropped so that it saves and loads as a plain float model. Returns the names
    of the layers replaced.
    """
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    dtype = (embedding.output_dtype if isinstance(embedding, ROW_EMBEDDINGS)
             else embedding.weight.dtype if embedding is not None else torch.float32)
    quantized = [(name, module) for name, module in model.named_modules(remove_duplicate=False)
                 if isinstance(module, (TernaryLinear, *ROW_LAYERS))]
    quantized.sort(key=lambda item: not isinstance(item[1], ROW_EMBEDDINGS))  # embeddings first: heads tie to them
    names, float_of_rows = [], {}
    for name, module in quantized:
        if isinstance(module, ROW_EMBEDDINGS):
            new = nn.Embedding(module.num_embeddings, module.embedding_dim, module.padding_idx,
                               device=module.weight.device, dtype=dtype)
            new.weight.copy_(module.dequantized())
            float_of_rows[id(module.weight)] = new.weight
        else:
            device = module.weight_packed.device if isinstance(module, TernaryLinear) else module.weight.device
            new = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                            device=device, dtype=dtype)
            if isinstance(module, TernaryLinear):
                new.weight.copy_(module.ternary_weight().to(torch.float32) * module.weight_scale)
            elif id(module.weight) in float_of_rows:
                new.weight = float_of_rows[id(module.weight)]  # a tied head shares the embedding again
            else:
                new.weight.copy_(module.dequantized())
            if module.bias is not None:
                new.bias.copy_(module.bias)
        swap_module(model, name, new)
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
