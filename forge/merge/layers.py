"""Which tensors of a state dict belong to which decoder layer, inferred from parameter names.

FrankenMerge and DFS move whole layers between models, so they need the layer structure. It is read
from names generically: the outermost ``<container>.<N>.`` segment, where the container is one of the
usual names (``model.layers.N.`` in Llama/Cognate, ``transformer.h.N.`` in GPT-2, ``blocks.N.``).
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

LAYER_CONTAINER_NAMES = ("layers", "layer", "h", "blocks", "block")

# Lazy prefix: the first (outermost) numbered container wins, so nested ModuleLists
# (``layers.3.mlp.experts.1.``) still belong to layer 3.
_LAYER_KEY = re.compile(
    r"^(?P<prefix>(?:[^.]+\.)*?(?:" + "|".join(LAYER_CONTAINER_NAMES) + r"))\.(?P<index>\d+)\.(?P<rest>.+)$"
)


class LayerStructureError(ValueError):
    """The layer structure cannot be read from the parameter names."""


@dataclass(frozen=True)
class LayerLayout:
    """The numbered decoder layers of one architecture."""

    prefix: str  # container path before the layer number, e.g. "model.layers"
    num_layers: int  # layers numbered 0..num_layers-1
    layer_suffixes: tuple[tuple[str, ...], ...]  # per layer, the parameter names after "<prefix>.<N>."
    other_keys: tuple[str, ...]  # parameters outside the layers (embeddings, final norm, head)

    def key(self, layer: int, suffix: str) -> str:
        """Full parameter name of ``suffix`` in ``layer``."""
        return f"{self.prefix}.{layer}.{suffix}"

    def layer_keys(self, layer: int) -> list[str]:
        return [self.key(layer, suffix) for suffix in self.layer_suffixes[layer]]


def infer_layer_layout(keys: Iterable[str], layer_prefix: str | None = None) -> LayerLayout:
    """Group parameter names by decoder layer; ``layer_prefix`` (e.g. "model.layers") settles ambiguity."""
    keys = list(keys)
    if layer_prefix is None:
        pattern = _LAYER_KEY
    else:
        pattern = re.compile(r"^(?P<prefix>" + re.escape(layer_prefix) + r")\.(?P<index>\d+)\.(?P<rest>.+)$")
    by_prefix: dict[str, dict[int, list[str]]] = {}
    for key in keys:
        match = pattern.match(key)
        if match:
            layers = by_prefix.setdefault(match["prefix"], {})
            layers.setdefault(int(match["index"]), []).append(match["rest"])
    if not by_prefix:
        containers = LAYER_CONTAINER_NAMES if layer_prefix is None else (layer_prefix,)
        wanted = ", ".join(f"'{name}.N.'" for name in containers)
        raise LayerStructureError(
            f"cannot find numbered decoder layers in the parameter names (looked for {wanted}; "
            f"first names: {keys[:4]}). Pass layer_prefix='<container path>' naming the module list of layers."
        )
    if len(by_prefix) > 1:
        raise LayerStructureError(
            f"several numbered module lists look like decoder layers: {sorted(by_prefix)}. "
            "Pass layer_prefix=... with the one that holds the decoder layers."
        )
    prefix, layers = next(iter(by_prefix.items()))
    if sorted(layers) != list(range(len(layers))):
        raise LayerStructureError(
            f"layers under '{prefix}' are numbered {sorted(layers)}, not 0..{len(layers) - 1}; "
            "the state dict is incomplete or the prefix is not the layer list (pass layer_prefix=...)."
        )
    layer_names = {f"{prefix}.{i}.{rest}" for i, rests in layers.items() for rest in rests}
    return LayerLayout(
        prefix=prefix,
        num_layers=len(layers),
        layer_suffixes=tuple(tuple(layers[i]) for i in range(len(layers))),
        other_keys=tuple(key for key in keys if key not in layer_names),
    )
