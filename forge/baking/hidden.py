"""The hidden states a causal LM's head reads, with the head itself run on one position only
(``forge.decoding.run_with_head_slice``), for GPT-2, Llama, the Cognate model (which returns no
``hidden_states``) and their peft wrappers alike.
"""
from __future__ import annotations

import torch
from torch import nn

from forge.decoding import run_with_head_slice


def final_hidden(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The hidden states the LM head reads, (B, T, H); the head itself runs on one position."""
    hidden, _ = run_with_head_slice(model, ids, slice(0, 1))
    return hidden
