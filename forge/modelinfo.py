"""What callers read off any transformers model or tokenizer, written once: the pad id, the position limit."""
from __future__ import annotations

from torch import nn

POSITION_FIELDS = ("n_positions", "max_position_embeddings", "n_ctx", "max_seq_len", "max_seq_length")
"""Config fields that declare a model's longest sequence, in lm-eval's order (its three first)."""


def pad_token_id(tokenizer) -> int:
    """The id that pads a batch: the tokenizer's pad token, else its end-of-text token, else 0. Padded positions
    are masked out of every loss and score, so any id will do where a tokenizer has neither."""
    return next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)


def max_positions(model: nn.Module) -> int | None:
    """The longest sequence the model's config declares, if it declares one."""
    config = getattr(model, "config", None)
    for name in POSITION_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
