"""Token-by-token decoding shared by our sampling loops, continuing the model's KV cache when it has one.

``IncrementalDecoder`` gives the next-token logits of a batch of growing sequences. Its first call runs
the whole prompts (the LM head, where the model has one, on the last position only); later calls run
only the tokens appended since, continuing the cache the model returned (under either name:
``forge.models.cache_api``). With ``model.config.use_cache`` False, or a model that returns no cache, every
call runs the whole prefix: the same logits, slower. ``sample_next`` is the one sampling step of these loops.
"""
from __future__ import annotations

import torch
from torch import nn

from forge.models.cache_api import cache_argument, cache_kwargs, returned_cache


def run_with_head_slice(model: nn.Module, ids: torch.Tensor, keep: slice, **forward_kwargs):
    """One forward of ``model`` on ``ids`` with its LM head on the ``keep`` positions only.

    A forward pre-hook on ``get_output_embeddings()`` records the hidden states the head receives and hands
    the head the ``keep`` slice, so no full-vocabulary logits are made for the whole sequence; it relies only
    on the model calling its output-embedding module. Returns those hidden states (B, T, H) and the model's
    output (its ``logits`` cover ``keep``). ``forward_kwargs`` go to the forward (default ``use_cache=False``).
    """
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings (LM head): cannot run its head alone")
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


class IncrementalDecoder:
    """Next-token logits for ``ids`` (B, t) as tokens are appended and rows are dropped."""

    def __init__(self, model: nn.Module, ids: torch.Tensor):
        self.model = model
        self.sequence = ids
        # A cache is continued only where the forward takes it back (feeding new tokens alone without it would
        # be wrong, not slow).
        self.use_cache = (bool(getattr(getattr(model, "config", None), "use_cache", False))
                          and cache_argument(model) is not None)
        self.cache = None
        self.cached_columns = 0  # columns of ``sequence`` the cache holds

    def logits(self) -> torch.Tensor:
        """Float32 logits (B, V) of the token after each current sequence."""
        if self.cache is None and hasattr(self.model, "get_output_embeddings"):
            _, out = run_with_head_slice(self.model, self.sequence, slice(-1, None), use_cache=self.use_cache)
        elif self.cache is None:  # a model without a separate head module gives its logits whole
            out = self.model(input_ids=self.sequence, use_cache=self.use_cache)
        else:
            out = self.model(input_ids=self.sequence[:, self.cached_columns:], use_cache=True,
                             **cache_kwargs(self.model, self.cache))
        self.cache = returned_cache(out) if self.use_cache else None
        self.cached_columns = self.sequence.shape[1]
        return out.logits[:, -1].float()

    def append(self, tokens: torch.Tensor) -> None:
        """Append one token (B,) to every row."""
        self.sequence = torch.cat([self.sequence, tokens.to(self.sequence.dtype).unsqueeze(-1)], dim=1)

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only the batch rows ``rows`` (indices, on the model's device)."""
        self.sequence = self.sequence.index_select(0, rows)
        if self.cache is not None:
            self.cache.reorder_cache(rows)


def sample_next(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """The next token of each row (B,): argmax at ``temperature`` 0, else a draw from
    softmax(logits / temperature) made with ``generator`` on the generator's device."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    if generator is None:
        raise ValueError("sampling at temperature > 0 needs a seeded torch.Generator")
    return draw(torch.softmax(logits / temperature, dim=-1), generator)


def draw(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token per row (B,) drawn from the distributions ``probs`` (B, V) with ``generator``, on the
    generator's device; returned on the device of ``probs``."""
    return torch.multinomial(probs.to(generator.device), 1, generator=generator).squeeze(-1).to(probs.device)
