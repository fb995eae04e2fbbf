"""Loading packed ternary models with ``AutoModelForCausalLM.from_pretrained``.

A packed model's ``config.json`` carries ``quantization_config = {"quant_method": "forge_bitnet",
"quantized_modules": [...]}``. Registered here with transformers' quantizer registry, it makes
``from_pretrained`` swap those ``nn.Linear`` layers for :class:`TernaryLinear` before the weights
are read, so ``weight_packed`` (uint8) and ``weight_scale`` load straight from the safetensors file.
``int8_modules`` (the embedding and the head, see ``forge.quant.int8``) become their int8 forms the same
way; a tied head is tied again by transformers' own weight tying, to the embedding's int8 matrix. ``int4_modules``
(``forge.quant.int4``, 4-bit groups of ``int4_group_size``) likewise.
"""
from __future__ import annotations

import torch.nn as nn
from transformers.quantizers.auto import (AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING,
                                          register_quantization_config, register_quantizer)
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from forge.quant.bitlinear import TernaryLinear
from forge.quant.convert import swap_module
from forge.quant.int4 import Int4Embedding, Int4Linear
from forge.quant.int8 import Int8Embedding, Int8Linear

QUANT_METHOD = "forge_bitnet"
PACKING = "trit5"  # five ternary digits per byte, see forge.quant.packing


class ForgeBitNetConfig(QuantizationConfigMixin):
    """Which linear layers of a model are stored as packed ternary weights, and which layers as int8 rows or
    int4 groups."""

    def __init__(self, quantized_modules: list[str] | None = None, packing: str = PACKING,
                 int8_modules: list[str] | None = None, int4_modules: list[str] | None = None,
                 int4_group_size: int | None = None, **kwargs):
        if packing != PACKING:
            raise ValueError(f"unknown ternary packing {packing!r}; this version reads {PACKING!r} only")
        self.quant_method = QUANT_METHOD
        self.quantized_modules = list(quantized_modules or [])
        self.int8_modules = list(int8_modules or [])
        self.int4_modules = list(int4_modules or [])
        if self.int4_modules and int4_group_size is None:
            raise ValueError("the quantization config lists int4_modules without int4_group_size: the model "
                             "directory was not written by forge.quant.convert.pack_model")
        self.int4_group_size = int4_group_size
        self.packing = packing


class ForgeBitNetQuantizer(HfQuantizer):
    """Swaps the recorded layers for TernaryLinear / int8 / int4 layers on the empty model, before loading."""

    requires_calibration = True  # loads models packed by forge.quant; it does not quantize at load time

    def _process_model_before_weight_loading(self, model, **kwargs):
        for name in self.quantization_config.quantized_modules:
            linear = model.get_submodule(name)
            swap_module(model, name, TernaryLinear(linear.in_features, linear.out_features,
                                                   bias=linear.bias is not None, device=linear.weight.device,
                                                   dtype=linear.weight.dtype))
        config = self.quantization_config
        rows = [(name, Int8Embedding, Int8Linear, {}) for name in getattr(config, "int8_modules", [])]
        rows += [(name, Int4Embedding, Int4Linear, {"group_size": config.int4_group_size})
                 for name in getattr(config, "int4_modules", [])]
        for name, embedding_rows, linear_rows, options in rows:
            module = model.get_submodule(name)
            device, dtype = module.weight.device, module.weight.dtype
            if isinstance(module, nn.Embedding):
                new = embedding_rows(module.num_embeddings, module.embedding_dim, module.padding_idx,
                                     device=device, dtype=dtype, **options)
            elif isinstance(module, nn.Linear):
                new = linear_rows(module.in_features, module.out_features, bias=module.bias is not None,
                                  device=device, dtype=dtype, **options)
            else:
                raise TypeError(f"integer-row module {name} is a {type(module).__name__} in this model class, not "
                                "an nn.Embedding or nn.Linear: the checkpoint does not belong to this architecture")
            swap_module(model, name, new)
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        # The loader makes every parameter trainable again; the ternary scales stay frozen.
        for module in model.modules():
            if isinstance(module, TernaryLinear):
                module.weight_scale.requires_grad_(False)
        return model

    def is_serializable(self):
        return True

    @property
    def is_trainable(self) -> bool:
        # Adapters (LoRA) train on top; the ternary weights themselves are buffers and stay frozen.
        return True


if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
    register_quantization_config(QUANT_METHOD)(ForgeBitNetConfig)
if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
    register_quantizer(QUANT_METHOD)(ForgeBitNetQuantizer)
