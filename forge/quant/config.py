"""Quantization settings and their adaptive choice by model size category."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


HEAL_OBJECTIVES = ("lm", "distill")


@dataclass(frozen=True)
class QuantConfig:
    """How a model is ternarised, guarded and recovered (spec Phase 4)."""

    zero_threshold: float = 0.5  # |w| / mean|W| at or below which a weight becomes 0 (0.5 = BitNet RoundClip)
    preserve_layers: tuple[str, ...] = ()  # module-name patterns (fnmatch, on any dotted suffix) kept in float
    preserve_edge_blocks: bool = False  # keep the first and the last transformer block in float
    min_out_features: int = 8  # narrower layers (gates, halting heads) stay in float: tiny gain, large risk
    float_layers: str = "int4"  # storage of the embedding, the head and the linears left in float: int4/int8/float
    int4_group_size: int = 32  # weights per float16 scale in int4 storage (even; 32: 4.5 bits per weight)
    target_compression: float = 8.0  # whole-model float32 bytes / quantized bytes this category aims for
    calibration_samples: int = 128  # calibration sequences used to fit each layer's output scale
    layer_revert_drop: float = 0.10  # revert a layer group when the relative accuracy drop exceeds this
    max_total_drop: float = 0.10  # above this the whole run restarts with the conservative config
    finetune_above_drop: float = 0.05  # fine-tune with the straight-through estimator above this drop
    finetune_epochs: int = 2  # epochs of straight-through fine-tuning
    finetune_lr: float = 1e-5  # learning rate of straight-through fine-tuning
    heal_steps: int = 0  # straight-through fine-tuning steps after each block is quantized, before the guard
    # judges it (cycling over the fine-tuning text); 0: the guard judges the block as quantized
    heal_lr: float = 1e-3  # learning rate of those healing steps
    heal_objective: str = "lm"  # what healing and fine-tuning minimise: "lm", the next-token cross-entropy of the
    # text; "distill", the KL from the float model's own predictions on it (keeps what the model did, not only text)

    def __post_init__(self):
        if not 0.0 <= self.zero_threshold < 1.5:
            raise ValueError(f"zero_threshold={self.zero_threshold} must be in [0, 1.5): 0.5 is BitNet's "
                             "RoundClip; at 1.5 or more every weight would be zero")
        if self.float_layers not in ("int4", "int8", "float"):
            raise ValueError(f"float_layers={self.float_layers!r}: choose int4 (4-bit groups, int8 when the guard "
                             "refuses them), int8 (rows) or float (kept as they are)")
        if self.int4_group_size < 2 or self.int4_group_size % 2:
            raise ValueError(f"int4_group_size={self.int4_group_size}: give an even number >= 2, e.g. 32 or 64")
        if self.calibration_samples < 0 or self.finetune_epochs < 0 or self.heal_steps < 0 or self.heal_lr <= 0:
            raise ValueError("calibration_samples, finetune_epochs and heal_steps must be >= 0, heal_lr > 0")
        if self.heal_objective not in HEAL_OBJECTIVES:
            raise ValueError(f"heal_objective={self.heal_objective!r}: choose {' or '.join(HEAL_OBJECTIVES)} (lm: the "
                             "text's next tokens; distill: the float model's predictions on it)")
        for name in ("layer_revert_drop", "max_total_drop", "finetune_above_drop"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} is a relative drop: give a value in [0, 1]")


SIZE_CATEGORIES = ("tiny", "small", "medium", "large")

# Smaller models have fewer redundant weights, so they aim lower (spec: >= 6x tiny, >= 8x otherwise)
# and larger ones get more calibration data.
_ADAPTIVE = {
    "tiny": QuantConfig(target_compression=6.0, calibration_samples=64),
    "small": QuantConfig(target_compression=8.0, calibration_samples=128),
    "medium": QuantConfig(target_compression=8.0, calibration_samples=256),
    "large": QuantConfig(target_compression=8.0, calibration_samples=512),
}


def _check_category(size_category: str) -> None:
    if size_category not in _ADAPTIVE:
        raise ValueError(f"unknown size category {size_category!r}; expected one of {', '.join(SIZE_CATEGORIES)}")


def compression_config(size_category: str) -> QuantConfig:
    """The default config for a size category."""
    _check_category(size_category)
    return _ADAPTIVE[size_category]


def conservative_config(size_category: str) -> QuantConfig:
    """The fallback after too large a drop: fewer zeros, edge blocks kept in float, more calibration."""
    base = compression_config(size_category)
    return dataclasses.replace(base, zero_threshold=0.35, preserve_edge_blocks=True,
                               calibration_samples=base.calibration_samples * 2)


def config_for_model(model, *, conservative: bool = False) -> QuantConfig:
    """Adaptive config for ``model``, its size category read by ``forge.models.size.get_model_size``."""
    from forge.models.size import get_model_size

    category = get_model_size(model)["size_category"]
    return conservative_config(category) if conservative else compression_config(category)
