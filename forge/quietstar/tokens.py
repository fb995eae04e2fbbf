"""The Quiet-STaR special tokens: a thinking wrapper and ten reasoning strategies.

``add_thinking_tokens`` adds them to a tokenizer and a model. A new embedding row starts as the mean
of the rows of the token's own word pieces ("<doubt>" from " doubt"), rescaled to their mean norm:
averaging k unrelated vectors shrinks the norm by about 1/sqrt(k), and a row much shorter (or, from
random init, of another scale) than the trained ones would make the new token behave unlike any word.
"""
from __future__ import annotations

import re
from typing import Iterable

import torch
from torch import nn

THINK_START = "[thinking]"
THINK_END = "[/endthinking]"
STRATEGY_TOKENS: tuple[str, ...] = (
    "<step>", "<mece>", "<falsify>", "<expert>", "<orthogonal>",
    "<doubt>", "<bayesian>", "<multidomain>", "<correct>", "<uncertain>",
)
THINKING_TOKENS: tuple[str, ...] = (THINK_START, THINK_END, *STRATEGY_TOKENS)
# What a line starting with each strategy token does (shown to API generators; documents the data).
STRATEGY_MEANINGS: dict[str, str] = {
    "<step>": "one step of the derivation",
    "<mece>": "the complete set of mutually exclusive possibilities",
    "<falsify>": "a test or observation that would show the answer wrong",
    "<expert>": "a domain fact the answer rests on",
    "<orthogonal>": "a check of a result by an independent route",
    "<doubt>": "questioning a claim or result before relying on it",
    "<bayesian>": "a prior probability and how evidence updates it",
    "<multidomain>": "noting that the problem spans several domains or kinds of quantity",
    "<correct>": "the outcome of a check: the result confirmed, or corrected",
    "<uncertain>": "what cannot be derived from the given information",
}


def token_words(token: str) -> str:
    """The plain words a special token stands for: ``"<doubt>"`` -> ``"doubt"``,
    ``"[/endthinking]"`` -> ``"endthinking"``."""
    return re.sub(r"[\[\]<>/]", "", token)


def strategies_in(text: str) -> list[str]:
    """The strategy tokens that occur in ``text``, in ``STRATEGY_TOKENS`` order."""
    return [token for token in STRATEGY_TOKENS if token in text]


def has_thinking_tokens(tokenizer) -> bool:
    """Whether ``tokenizer`` holds every Quiet-STaR token (a model from Phase 3 on)."""
    vocab = tokenizer.get_vocab()
    return all(token in vocab for token in THINKING_TOKENS)


def suppressed_thinking_ids(tokenizer) -> tuple[int, ...]:
    """The thinking tokens' ids, sorted: what generation that must not think (a direct answer) suppresses; () for a
    tokenizer without them."""
    return tuple(sorted(thinking_token_ids(tokenizer).values())) if has_thinking_tokens(tokenizer) else ()


def thinking_token_ids(tokenizer) -> dict[str, int]:
    """Id of every thinking token in ``tokenizer``; raises ValueError if any is missing."""
    vocab = tokenizer.get_vocab()
    missing = [token for token in THINKING_TOKENS if token not in vocab]
    if missing:
        raise ValueError(f"the tokenizer lacks the Quiet-STaR tokens {missing}: call "
                         "forge.quietstar.add_thinking_tokens(model, tokenizer) first")
    return {token: vocab[token] for token in THINKING_TOKENS}


def _seed_rows(token: str, tokenizer, usable_rows: int, excluded: set[int]) -> list[int]:
    # With a leading space: the form a word takes inside a sentence in GPT-2-style BPEs.
    ids = tokenizer(" " + token_words(token), add_special_tokens=False)["input_ids"]
    unusable = excluded | {tokenizer.unk_token_id}
    return [i for i in ids if i < usable_rows and i not in unusable]


@torch.no_grad()
def _init_row(weight: torch.Tensor, bias: torch.Tensor | None, row: int, sources: list[int],
              old_rows: int) -> None:
    pool = weight[sources] if sources else weight[:old_rows]
    mean = pool.float().mean(dim=0)
    target_norm = pool.float().norm(dim=-1).mean()
    weight[row] = (mean * (target_norm / mean.norm().clamp_min(1e-12))).to(weight.dtype)
    if bias is not None:
        bias[row] = (bias[sources] if sources else bias[:old_rows]).float().mean().to(bias.dtype)


def _output_matrix(model) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The untied output projection (weight, bias), or None when it shares the input embedding."""
    head = model.get_output_embeddings()
    if head is None:
        return None
    if head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr():
        return None
    return head.weight, getattr(head, "bias", None)


def add_thinking_tokens(model: nn.Module, tokenizer, tokens: Iterable[str] = THINKING_TOKENS) -> dict[str, int]:
    """Add ``tokens`` (default: the 12 Quiet-STaR tokens) as special tokens to ``tokenizer`` and ``model``.

    Idempotent: tokens already in the tokenizer keep their ids and their trained rows. The input
    embedding (and an untied output head) grows to ``len(tokenizer)``; each row of a newly added token
    is the mean of its word pieces' rows rescaled to their mean norm (fallback when no piece is usable:
    the mean of all existing rows at the mean row norm). Returns ``{token: id}``.
    """
    tokens = list(tokens)
    vocab = tokenizer.get_vocab()
    new_tokens = [token for token in tokens if token not in vocab]
    embedding = model.get_input_embeddings()
    old_rows = embedding.weight.shape[0]
    if new_tokens:
        tokenizer.add_special_tokens({"extra_special_tokens": new_tokens}, replace_extra_special_tokens=False)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in tokens}
    if len(tokenizer) > old_rows:
        # mean_resizing=False: the rows are set below; its covariance sampling would only be overwritten.
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    # Rows to initialise: newly added tokens, and tokens that were in the tokenizer but beyond the
    # model's old matrix (a tokenizer extended without resizing its model).
    to_init = [token for token in tokens if token in new_tokens or ids[token] >= old_rows]
    if not to_init:
        return ids
    excluded = set(ids.values())
    weight = model.get_input_embeddings().weight
    output = _output_matrix(model)
    for token in to_init:
        sources = _seed_rows(token, tokenizer, old_rows, excluded)
        _init_row(weight.data, None, ids[token], sources, old_rows)
        if output is not None:
            head_weight, head_bias = output
            _init_row(head_weight.data, None if head_bias is None else head_bias.data, ids[token], sources, old_rows)
    return ids
