"""Run a causal LM so that its LM head sees only the positions we need.

A forward pre-hook on ``get_output_embeddings()`` records the hidden states the head receives and
hands the head a one-position slice instead, so no full-vocabulary logits are made for the whole
sequence. It relies only on the model calling its output-embedding module, so it works the same for
GPT-2, Llama, the Cognate model (which returns no ``hidden_states``) and their peft wrappers.
"""
from __future__ import annotations

import torch
from torch import nn


def run_with_head_slice(model: nn.Module, ids: torch.Tensor, keep: slice, **forward_kwargs):
    """One forward of ``model`` on ``ids`` with its LM head on the ``keep`` positions only.

    Returns the hidden states the head received (B, T, H) and the model's output (its ``logits`` cover
    ``keep``). ``forward_kwargs`` go to the forward (default ``use_cache=False``).
    """
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings (LM head); it cannot be baked")
    captured: list[torch.Tensor] = []

    def grab(module, args):
        captured.append(args[0])
        return (args[0][..., keep, :],) + tuple(args[1:])

    handle = head.register_forward_pre_hook(grab)
    try:
        out = model(input_ids=ids, **{"use_cache": False, **forward_kwargs})
    finally:
        handle.remove()
    if len(captured) != 1:
        raise ValueError(
            f"{type(model).__name__} called its LM head {len(captured)} times in one forward; expected once"
        )
    return captured[0], out


def final_hidden(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The hidden states the LM head reads, (B, T, H); the head itself runs on one position."""
    hidden, _ = run_with_head_slice(model, ids, slice(0, 1))
    return hidden
