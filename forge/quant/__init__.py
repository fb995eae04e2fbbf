"""BitNet b1.58 ternary quantization: layers, packing, staged quantization, HF loading.

Importing this package registers the ``forge_bitnet`` quantizer with transformers, so packed model
directories load with ``AutoModelForCausalLM.from_pretrained``. LoRA on ternary models:
``forge.quant.lora`` (imports peft); a whole Phase 4 run on a model directory: ``forge.quant.run``.
"""
from forge.quant import hf_integration  # noqa: F401  (registers the quantizer with transformers)
from forge.quant.bitlinear import BitLinear, TernaryLinear, absmean_ternarize
from forge.quant.config import QuantConfig, compression_config, config_for_model, conservative_config
from forge.quant.convert import pack_model, quantizable_linears, ternary_stats, to_bitlinear
from forge.quant.staged import StagedResult, staged_quantize

__all__ = ["BitLinear", "QuantConfig", "StagedResult", "TernaryLinear", "absmean_ternarize",
           "compression_config", "config_for_model", "conservative_config", "pack_model",
           "quantizable_linears", "staged_quantize", "ternary_stats", "to_bitlinear"]
