"""Loading packed ternary models with ``AutoModelForCausalLM.from_pretrained``.

A packed model's ``config.json`` carries ``quantization_config = {"quant_method": "forge_bitnet",
"quantized_modules": [...]}``. Registered here with transformers' quantizer registry, it makes
``from_pretrained`` swap those ``nn.Linear`` layers for :class:`TernaryLinear` before the weights
are read, so ``weight_packed`` (uint8) and ``weight_scale`` load straight from the safetensors file.
"""
from __future__ import annotations

from transformers.quantizers.auto import (AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING,
                                          register_quantization_config, register_quantizer)
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from forge.quant.bitlinear import TernaryLinear

QUANT_METHOD = "forge_bitnet"
PACKING = "trit5"  # five ternary digits per byte, see forge.quant.packing


class ForgeBitNetConfig(QuantizationConfigMixin):
    """Which linear layers of a model are stored as packed ternary weights."""

    def __init__(self, quantized_modules: list[str] | None = None, packing: str = PACKING, **kwargs):
        if packing != PACKING:
            raise ValueError(f"unknown ternary packing {packing!r}; this version reads {PACKING!r} only")
        self.quant_method = QUANT_METHOD
        self.quantized_modules = list(quantized_modules or [])
        self.packing = packing


class ForgeBitNetQuantizer(HfQuantizer):
    """Swaps the recorded linear layers for TernaryLinear on the empty model, before loading."""

    requires_calibration = True  # loads models packed by forge.quant; it does not quantize at load time

    def _process_model_before_weight_loading(self, model, **kwargs):
        for name in self.quantization_config.quantized_modules:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            linear = getattr(parent, child)
            setattr(parent, child, TernaryLinear(linear.in_features, linear.out_features,
                                                 bias=linear.bias is not None, device=linear.weight.device,
                                                 dtype=linear.weight.dtype))
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
