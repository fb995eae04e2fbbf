"""LoRA adapters (peft) on a frozen ternary model."""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora.layer import Linear as LoraLinear

from forge.quant.bitlinear import TernaryLinear


class TernaryLoraLinear(LoraLinear):
    """peft's LoRA linear around a :class:`TernaryLinear`: float low-rank update, ternary base untouched."""

    def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
        return module.in_features, module.out_features

    def merge(self, *args, **kwargs) -> None:
        raise NotImplementedError("a float LoRA update cannot be merged into ternary weights without "
                                  "re-quantizing: keep the adapter separate (save_pretrained on the PeftModel)")


def ternary_lora_config(**lora_kwargs) -> LoraConfig:
    """A ``LoraConfig`` (same arguments) whose adapters also wrap TernaryLinear layers."""
    config = LoraConfig(**lora_kwargs)
    config._register_custom_module({TernaryLinear: TernaryLoraLinear})
    return config


def add_lora(model: nn.Module, *, r: int = 8, lora_alpha: int = 16, lora_dropout: float = 0.0,
             target_modules: list[str] | str = "all-linear") -> PeftModel:
    """Wrap ``model`` (packed ternary, from ``from_pretrained``) with trainable LoRA adapters.

    Only the adapters train; the packed ternary weights are buffers and the scales frozen parameters.
    """
    if target_modules == "all-linear":
        target_modules = sorted({name.rpartition(".")[2] for name, m in model.named_modules()
                                 if isinstance(m, TernaryLinear)})
        if not target_modules:
            raise ValueError("the model has no TernaryLinear layer: quantize and pack it first "
                             "(python -m forge.quant), or name target_modules explicitly")
    config = ternary_lora_config(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                                 target_modules=target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def load_lora(model: nn.Module, adapter_dir: str | Path, *, is_trainable: bool = False) -> PeftModel:
    """Load a LoRA adapter saved from :func:`add_lora` onto a ternary model.

    peft's own ``PeftModel.from_pretrained`` refuses TernaryLinear targets: the custom-layer mapping is
    not part of the saved adapter config, so it is registered again here.
    """
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir} holds no adapter_config.json: save the adapter with "
                                "PeftModel.save_pretrained(dir) first")
    config = LoraConfig.from_pretrained(adapter_dir)
    config._register_custom_module({TernaryLinear: TernaryLoraLinear})
    return PeftModel.from_pretrained(model, adapter_dir, config=config, is_trainable=is_trainable)
