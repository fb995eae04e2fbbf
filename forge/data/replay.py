"""Replay of pretraining text during fine-tuning: each step adds a language-modelling loss on a few blocks of
the text the model was pretrained on, so that learning a format or a task does not erase its text modelling
(Quiet-STaR Step 1 and the curriculum's levels; measured effect in docs/BENCHMARKS.md)."""
from __future__ import annotations

import hashlib
from typing import Sequence

import torch
import torch.nn.functional as F

from forge.data.lm_dataset import blocks_from_stream, token_stream


class Replay:
    """Full ``seq_len``-token blocks of ``texts``, handed out ``sequences`` per step in a seeded order (cycling)."""

    def __init__(self, tokenizer, texts: Sequence[str], seq_len: int, sequences: int, seed: int):
        ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []
        self.blocks = blocks_from_stream(token_stream(ids, tokenizer.eos_token_id), seq_len)
        if len(self.blocks) == 0:
            raise ValueError(f"the replay texts hold less than one sequence of {seq_len} tokens: give more text "
                             "(cognate.data.replay_chars) or turn replay off (replay_sequences=0)")
        if sequences < 1:
            raise ValueError(f"replay needs at least one sequence per step, got {sequences}")
        self.sequences = sequences
        self.order = torch.randperm(len(self.blocks), generator=torch.Generator().manual_seed(seed))

    @property
    def tokens(self) -> int:
        return self.blocks.numel()

    def digest(self) -> str:
        """Identifies the blocks, for checkpoint fingerprints."""
        return hashlib.sha256(self.blocks.numpy().tobytes()).hexdigest()

    def batch(self, step: int) -> torch.Tensor:
        """The blocks of optimizer step ``step`` (deterministic: a resumed run draws the same ones)."""
        rows = self.order[torch.arange(step * self.sequences, (step + 1) * self.sequences) % len(self.order)]
        return self.blocks[rows]

    def loss(self, model, step: int) -> torch.Tensor:
        """Mean next-token cross-entropy of ``model`` over every token of the step's blocks."""
        ids = self.batch(step).to(next(model.parameters()).device)
        logits = model(input_ids=ids, use_cache=False).logits
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)).float(), ids[:, 1:].reshape(-1))
