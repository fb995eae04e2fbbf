"""Phase 1's training-loop settings (``cognate.train`` in the pipeline config)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from forge.optim import MuonGrokfastConfig


@dataclass
class CognateTrainConfig:
    seq_len: int = 128
    """Tokens per training sequence."""
    batch_size: int = 8
    """Sequences per optimizer step (micro-batches are accumulated to reach it)."""
    micro_batch_size: int | None = None
    """Sequences per forward pass; None: the largest that fits the device's free memory."""
    max_steps_per_epoch: int | None = 40
    """Cap on optimizer steps per epoch (None: the whole stage corpus each epoch)."""
    grad_clip: float = 1.0
    """Global gradient-norm clip."""
    warmup_steps: int = 10
    """Linear learning-rate warm-up steps at the start of training."""
    checkpoint_every: int = 25
    """Optimizer steps between checkpoints (a killed run resumes from the last one)."""
    eval_max_batches: int = 16
    """Validation micro-batches per evaluation (None-like 0: the whole validation set)."""
    spike_factor: float = 4.0
    """A loss above this multiple of the recent mean counts as divergence (as do NaN and inf)."""
    lr_backoff: float = 0.5
    """Learning-rate factor applied after rolling back from a divergence."""
    max_rollbacks: int = 3
    """Divergences tolerated before the model's training fails."""
    precision: Literal["auto", "float32", "bf16", "fp16"] = "auto"
    """Training arithmetic. auto: bf16 autocast on CUDA GPUs with bf16 (Ampere+, with TF32 matmuls), fp16 autocast
    and a gradient scaler on older ones (Turing: GTX 1660), float32 on CPU; float32, bf16, fp16: forced."""
    optimizer: MuonGrokfastConfig = field(default_factory=lambda: MuonGrokfastConfig(muon_lr=1e-2, adam_lr=1e-2))
    """MuonGrokfast settings. Spec: muon_lr 1e-3, grokfast_lambda 0.3, qk_clip 30 (the full presets); the
    tiny models reach 0.34x unigram perplexity in 100 steps at 1e-2 against 0.76x at 3e-3."""
