"""Merge library: merge techniques on state dicts, EvoMerge's eight combos, weight-space diversity.

Plain PyTorch; model directories are read and written by ``forge.merge.io`` and ``python -m forge.merge``.
"""
from forge.merge.combos import COMBO_STAGES, NUM_COMBOS, ComboParams, apply_combo, combo_methods, weight_space_diversity
from forge.merge.layers import LayerLayout, LayerStructureError, infer_layer_layout
from forge.merge.methods import MERGE_METHODS, MergeError, MergeMethod, StateDict, check_compatible, merge, tensor_seed

__all__ = [
    "COMBO_STAGES",
    "MERGE_METHODS",
    "NUM_COMBOS",
    "ComboParams",
    "LayerLayout",
    "LayerStructureError",
    "MergeError",
    "MergeMethod",
    "StateDict",
    "apply_combo",
    "check_compatible",
    "combo_methods",
    "infer_layer_layout",
    "merge",
    "tensor_seed",
    "weight_space_diversity",
]
