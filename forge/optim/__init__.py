"""Optimizers: MuonGrokfast (Muon + AdamW + Grokfast gradient filter + QK-clip)."""
from forge.optim.muon_grokfast import (
    MuonGrokfast,
    MuonGrokfastConfig,
    build_muon_grokfast,
    is_qk_clip_module,
    newton_schulz5,
    split_parameters,
)

__all__ = [
    "MuonGrokfast",
    "MuonGrokfastConfig",
    "build_muon_grokfast",
    "is_qk_clip_module",
    "newton_schulz5",
    "split_parameters",
]
