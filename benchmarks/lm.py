"""The model side of evaluation: log-likelihoods of continuations, greedy generation, perplexity.

Works with any causal LM whose forward takes ``input_ids`` and returns ``.logits`` (every
``AutoModelForCausalLM``). Models with a working KV cache get the fast paths:

- multiple choice: items whose contexts have the same token length are stacked without padding, their
  contexts run once, and the cache is repeated for every choice, so a context is never recomputed;
- generation: one token per step from the cache; finished rows leave the batch.

Models without a cache (or whose cache gives different logits) use the plain path: one right-padded
sequence per (context, continuation), sorted by length. Both give the same numbers.
Tokenisation follows lm-evaluation-harness (``_encode_pair``: trailing context spaces move to the
continuation; the continuation is the tail of the encoded whole).
"""
from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn

from forge.decoding import sample_next
from forge.devices import model_device
from forge.models.cache_api import cache_argument, cache_kwargs, returned_cache
from forge.modelinfo import max_positions

log = logging.getLogger(__name__)
_REPORTED_NO_CACHE: set[str] = set()  # model classes whose missing cache was already logged

# Upper bound on (rows x positions) of one forward pass: the logits alone are this times the
# vocabulary size in float32 (2048 x 50257 x 4 B = 0.4 GB).
DEFAULT_MAX_BATCH_TOKENS = 2048
# Continuation positions projected onto the vocabulary at a time, as (rows x vocabulary) logits elements.
HEAD_CHUNK_ELEMENTS = 2**23


@dataclass(frozen=True)
class ModelInfo:
    """What the engine needs to know about a model, probed once."""

    max_length: int  # longest input the model accepts (positions)
    kv_cache: bool  # whether incremental decoding with the model's cache matches a full forward
    logits_to_keep: bool  # whether forward accepts logits_to_keep (saves the context logits)
    use_cache_arg: bool  # whether forward accepts use_cache
    pad_id: int  # any valid token id for right padding (never attended to by real tokens)
    hidden_head: bool = False  # whether the output embeddings applied to the last hidden states give the logits,
    # so continuation scoring projects only real (not padding) positions onto the vocabulary
    decoder: bool = False  # whether the decoder alone (``get_decoder()``, no head) gives those hidden states (and,
    # with a cache, a cache it continues from): passes then skip the model's own logits


def model_max_length(model, tokenizer) -> int:
    """lm-eval's rule: the config's position limit, else the tokenizer's, else 2048."""
    declared = max_positions(model)
    if declared is not None:
        return declared
    tokenizer_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_max, int) and 0 < tokenizer_max < 10**9:
        return tokenizer_max
    return 2048


@torch.no_grad()
def probe_model(model, tokenizer) -> ModelInfo:
    """Check once whether the cache reproduces a full forward pass (a model may ignore it)."""
    device = model_device(model)
    pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    accepts = inspect.signature(model.forward).parameters
    ids = torch.tensor([[1, 2, 3]], device=device) % model.config.vocab_size
    use_cache_arg = "use_cache" in accepts
    full = model(ids, **({"use_cache": False} if use_cache_arg else {})).logits[:, -1].float()
    kv_cache = False
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    hidden_head = False
    takes_kwargs = any(param.kind is inspect.Parameter.VAR_KEYWORD for param in accepts.values())
    if head is not None and ("output_hidden_states" in accepts or takes_kwargs):
        states = getattr(model(ids, output_hidden_states=True, **({"use_cache": False} if use_cache_arg else {})),
                         "hidden_states", None)
        # A model whose logits are more than the head of its last hidden state (soft-capping, scaling,
        # a norm applied after the states are recorded) fails this and keeps the full-logits path.
        hidden_head = bool(states) and bool(torch.allclose(head(states[-1][:, -1]).float(), full, atol=1e-4,
                                                           rtol=1e-3))
    cache_name = cache_argument(model)
    if cache_name is not None and use_cache_arg:
        past = returned_cache(model(ids[:, :2], use_cache=True))
        if past is not None:
            step = model(ids[:, 2:], **cache_kwargs(model, past), use_cache=True).logits[:, -1].float()
            kv_cache = bool(torch.allclose(step, full, atol=1e-4, rtol=1e-3))
    if not kv_cache:
        _report_no_cache(model, cache_name, use_cache_arg)
    decoder = False
    if head is not None and hasattr(model, "get_decoder") and model.get_decoder() is not model:
        # The head of the decoder's own last hidden state must give the model's logits, and with a cache the
        # decoder's cache, continued by the decoder, too (a model may do more than head(decoder) itself).
        decoder_module = model.get_decoder()
        states = getattr(decoder_module(ids, **({"use_cache": False} if kv_cache else {})), "last_hidden_state", None)
        decoder = states is not None and bool(torch.allclose(head(states[:, -1]).float(), full, atol=1e-4,
                                                             rtol=1e-3))
        if decoder and kv_cache:
            past = returned_cache(decoder_module(ids[:, :2], use_cache=True))
            step = (decoder_module(ids[:, 2:], **cache_kwargs(decoder_module, past),
                                   use_cache=True).last_hidden_state[:, -1]
                    if past is not None and cache_argument(decoder_module) is not None else None)
            decoder = step is not None and bool(torch.allclose(head(step).float(), full, atol=1e-4, rtol=1e-3))
    hidden_head = hidden_head or decoder
    return ModelInfo(max_length=model_max_length(model, tokenizer), kv_cache=kv_cache,
                     logits_to_keep="logits_to_keep" in accepts, use_cache_arg=use_cache_arg, pad_id=pad_id,
                     hidden_head=hidden_head, decoder=decoder)


def _report_no_cache(model, cache_name: str | None, use_cache_arg: bool) -> None:
    """Say once per model class why the engine recomputes prefixes (same scores, slower)."""
    kind = type(model).__name__
    if kind in _REPORTED_NO_CACHE:
        return
    _REPORTED_NO_CACHE.add(kind)
    if cache_name is None or not use_cache_arg:
        reason = "its forward takes no cache (neither `cache=` nor `past_key_values=`, with `use_cache=`)"
    else:
        reason = f"decoding from its cache (`{cache_name}=`) does not reproduce a full forward pass"
    log.info("benchmarks: %s has no usable KV cache: %s; every prefix is recomputed (same scores, slower)",
             kind, reason)


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval ``_encode_pair``: trailing spaces of the context go to the continuation."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = encode(tokenizer, context + continuation)
    context_ids = encode(tokenizer, context)
    if len(whole) <= len(context_ids):
        raise ValueError(f"continuation {continuation!r} adds no tokens to its context: every choice must be "
                         "non-empty text")
    return context_ids, whole[len(context_ids):]


def _reorder_cache(past, index: torch.Tensor):
    """Select/repeat batch rows of a cache (a transformers Cache or legacy tuples)."""
    if hasattr(past, "reorder_cache"):
        past.reorder_cache(index)
        return past
    return tuple(tuple(tensor.index_select(0, index) for tensor in layer) for layer in past)


def _chunks_by_tokens(rows: list, length_of, batch_size: int, max_batch_tokens: int):
    """Split rows (already sorted by decreasing length) into batches within both budgets."""
    batch: list = []
    for row in rows:
        width = length_of(batch[0] if batch else row)
        if batch and (len(batch) >= batch_size or (len(batch) + 1) * width > max_batch_tokens):
            yield batch
            batch = []
        batch.append(row)
    if batch:
        yield batch


@torch.no_grad()
def loglikelihood_choices(model, tokenizer, requests: Sequence[tuple[str, Sequence[str]]], *,
                          batch_size: int = 32, max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
                          info: ModelInfo | None = None, shared_context: bool = True) -> list[list[float]]:
    """Summed log-probability of each continuation given its context, per item.

    ``requests`` holds ``(context, [continuation, ...])`` per item; the result has the same shape.
    ``shared_context=False`` forces the plain path (used to check that both agree).
    """
    info = info or probe_model(model, tokenizer)
    encoded = []
    for context, continuations in requests:
        pairs = [encode_pair(tokenizer, context, cont) for cont in continuations]
        context_ids = pairs[0][0]
        if not context_ids:
            # lm-eval: an empty context is conditioned on the end-of-text token.
            context_ids = [info.pad_id]
        encoded.append((context_ids, [cont_ids for _, cont_ids in pairs]))
    results: list[list[float] | None] = [None] * len(encoded)
    shared, plain = [], []
    for index, (context_ids, conts) in enumerate(encoded):
        fits = len(context_ids) + max(len(c) for c in conts) - 1 <= info.max_length
        (shared if (shared_context and info.kv_cache and fits) else plain).append(index)
    _shared_context_pass(model, encoded, shared, results, info, batch_size, max_batch_tokens)
    _plain_pass(model, encoded, plain, results, info, batch_size, max_batch_tokens)
    return results  # type: ignore[return-value]


def _forward_kwargs(model, info: ModelInfo, *, past=None, keep: int | None = None, cache: bool = False) -> dict:
    """The forward arguments this model accepts: the cache, and logits only for the last ``keep`` positions."""
    kwargs = {}
    if info.use_cache_arg:
        kwargs["use_cache"] = info.kv_cache and cache
    if past is not None:
        kwargs.update(cache_kwargs(model, past))
    if keep is not None and info.logits_to_keep:
        kwargs["logits_to_keep"] = keep
    return kwargs


def _forward(model, ids: torch.Tensor, info: ModelInfo, *, past=None, keep: int | None = None, cache: bool = False):
    """Float logits of the last ``keep`` positions (all when None), and the cache when ``cache``."""
    out = model(ids, **_forward_kwargs(model, info, past=past, keep=keep, cache=cache))
    logits = out.logits if keep is None else out.logits[:, -keep:]
    return logits.float(), returned_cache(out)


def _logprobs_at(model, ids: torch.Tensor, info: ModelInfo, rows: torch.Tensor, cols: torch.Tensor,
                 targets: torch.Tensor, *, past=None) -> torch.Tensor:
    """log p(targets) at positions (rows, cols) of one forward pass over ``ids`` (after ``past``).

    With ``info.hidden_head`` only those positions meet the vocabulary projection and its log-partition,
    the two costs that dominate a small model; padding and context positions are never projected.
    """
    if not info.hidden_head:
        logits, _ = _forward(model, ids, info, past=past, cache=past is not None)
        return _token_logprobs(logits[rows, cols], targets)
    hidden, _ = _hidden_states(model, ids, info, past=past, cache=past is not None)
    return _head_logprobs(model.get_output_embeddings(), hidden[rows, cols], targets)


def _hidden_states(model, ids: torch.Tensor, info: ModelInfo, *, past=None, cache: bool = False):
    """The last hidden states (the head's input) and the cache when ``cache``; needs ``info.hidden_head``."""
    if info.decoder:
        decoder = model.get_decoder()
        kwargs = {"use_cache": cache} if info.kv_cache else {}
        out = decoder(ids, **kwargs, **cache_kwargs(decoder, past))
        return out.last_hidden_state, returned_cache(out) if cache else None
    out = model(ids, output_hidden_states=True, **_forward_kwargs(model, info, past=past, keep=1, cache=cache))
    return out.hidden_states[-1], returned_cache(out)


def _head_logprobs(head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(targets) from the head applied to ``hidden``, a block of rows at a time.

    A bias-free ``nn.Linear`` head writes every block into one reused buffer: allocating a fresh
    (rows x vocabulary) tensor per product cost a quarter of PIQA's time on a 50257-token head.
    """
    vocab = head.weight.shape[0]
    rows = max(1, min(len(hidden), HEAD_CHUNK_ELEMENTS // vocab))
    reuse = type(head) is nn.Linear and head.bias is None
    buffer = torch.empty(rows, vocab, dtype=hidden.dtype, device=hidden.device) if reuse else None
    scores = []
    for part, part_targets in zip(hidden.split(rows), targets.split(rows)):
        logits = torch.matmul(part, head.weight.t(), out=buffer[:len(part)]) if reuse else head(part)
        scores.append(_token_logprobs(logits.float(), part_targets))
    return torch.cat(scores)


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) at each position: the target's logit minus the log-partition (no full log-softmax)."""
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def _shared_context_pass(model, encoded, indices, results, info, batch_size, max_batch_tokens):
    """Contexts of equal token length run once together; their cache serves every choice."""
    device = model_device(model)
    by_length: dict[int, list[int]] = {}
    for index in indices:
        by_length.setdefault(len(encoded[index][0]), []).append(index)
    for context_len, group in sorted(by_length.items(), reverse=True):
        group.sort(key=lambda i: -max(len(c) for c in encoded[i][1]))
        # Budget: the widest forward is a context pass or a choice pass of the first item in the batch.
        row_width = lambda i: max(context_len, max(len(c) for c in encoded[i][1]))  # noqa: E731
        per_item = max(len(encoded[i][1]) for i in group)
        for batch in _chunks_by_tokens(group, row_width, max(1, batch_size // per_item),
                                       max(max_batch_tokens // per_item, row_width(group[0]))):
            contexts = torch.tensor([encoded[i][0] for i in batch], device=device)
            owner = [row for row, i in enumerate(batch) for _ in encoded[i][1]]
            conts = [cont for i in batch for cont in encoded[i][1]]
            first_targets = torch.tensor([cont[0] for cont in conts], device=device)
            if info.hidden_head:
                # The first tokens' rows join the other continuation rows in one vocabulary projection.
                hidden, past = _hidden_states(model, contexts, info, cache=True)
                first_hidden = hidden[owner, -1]
            else:
                first_logits, past = _forward(model, contexts, info, keep=1, cache=True)
                first_hidden = None
            rest_width = max(len(cont) for cont in conts) - 1
            inputs = torch.full((len(conts), max(rest_width, 1)), info.pad_id, device=device)
            targets = torch.zeros((len(conts), max(rest_width, 1)), dtype=torch.long, device=device)
            mask = torch.zeros((len(conts), max(rest_width, 1)), dtype=torch.bool, device=device)
            for row, cont in enumerate(conts):
                n = len(cont) - 1
                inputs[row, :n] = torch.tensor(cont[:-1])
                targets[row, :n] = torch.tensor(cont[1:])
                mask[row, :n] = True
            rows, cols = mask.nonzero(as_tuple=True)
            if rest_width > 0:
                past = _reorder_cache(past, torch.tensor(owner, device=device))
            if first_hidden is not None:
                rest_hidden = (_hidden_states(model, inputs, info, past=past, cache=True)[0][rows, cols]
                               if rest_width > 0 else first_hidden[:0])
                scores = _head_logprobs(model.get_output_embeddings(), torch.cat([first_hidden, rest_hidden]),
                                        torch.cat([first_targets, targets[rows, cols]]))
                first, rest_scores = scores[:len(conts)], scores[len(conts):]
            else:
                first = _token_logprobs(first_logits[owner, 0], first_targets)
                rest_scores = (_logprobs_at(model, inputs, info, rows, cols, targets[rows, cols], past=past)
                               if rest_width > 0 else first[:0])
            totals = (first + torch.zeros(len(conts), device=device).index_add(0, rows, rest_scores)).tolist()
            cursor = 0
            for i in batch:
                count = len(encoded[i][1])
                results[i] = totals[cursor:cursor + count]
                cursor += count


def _plain_pass(model, encoded, indices, results, info, batch_size, max_batch_tokens):
    """One sequence per (context, continuation), left-truncated to the model's length as lm-eval does."""
    device = model_device(model)
    rows = []  # (item, choice, input ids, continuation ids)
    for index in indices:
        context_ids, conts = encoded[index]
        for choice, cont in enumerate(conts):
            inputs = (context_ids + cont)[-(info.max_length + 1):][:-1]
            rows.append((index, choice, inputs, cont))
    rows.sort(key=lambda row: -len(row[2]))
    for index in indices:
        results[index] = [0.0] * len(encoded[index][1])
    for batch in _chunks_by_tokens(rows, lambda row: len(row[2]), batch_size, max_batch_tokens):
        width = len(batch[0][2])
        inputs = torch.full((len(batch), width), info.pad_id, device=device)
        for row, (_, _, ids, _) in enumerate(batch):
            inputs[row, :len(ids)] = torch.tensor(ids)
        rows = torch.tensor([row for row, (_, _, _, cont) in enumerate(batch) for _ in cont], device=device)
        cols = torch.tensor([position for _, _, ids, cont in batch for position in range(len(ids) - len(cont), len(ids))],
                            device=device)
        targets = torch.tensor([token for _, _, _, cont in batch for token in cont], device=device)
        sums = torch.zeros(len(batch), device=device).index_add(0, rows, _logprobs_at(model, inputs, info, rows, cols,
                                                                                       targets))
        for row, (index, choice, _, _) in enumerate(batch):
            results[index][choice] = float(sums[row])


def _truncate_at_stop(text: str, until: Sequence[str]) -> str:
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text


@torch.no_grad()
def generate_until(model, tokenizer, prompts: Sequence[str], *, until: Sequence[str] = (),
                   max_new_tokens: int = 256, batch_size: int = 16, temperature: float = 0.0,
                   seed: int = 1234, info: ModelInfo | None = None,
                   suppress_token_ids: Sequence[int] = ()) -> list[str]:
    """Continue each prompt until a stop sequence, end-of-text or ``max_new_tokens``; the tokens of
    ``suppress_token_ids`` are never generated (e.g. the thinking tokens, for a direct answer).

    Greedy when ``temperature`` is 0 (lm-eval ``do_sample: false``), else sampling with a seeded
    generator. Prompts are left-truncated to leave room for ``max_new_tokens``, as lm-eval does.
    Prompts of equal token length share a batch, so no padding (and no attention mask) is needed.
    """
    info = info or probe_model(model, tokenizer)
    device = model_device(model)
    room = max(1, info.max_length - max_new_tokens)
    encoded = [(encode(tokenizer, prompt) or [info.pad_id])[-room:] for prompt in prompts]
    outputs = [""] * len(prompts)
    by_length: dict[int, list[int]] = {}
    for index, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(index)
    generator = torch.Generator(device=device).manual_seed(seed) if temperature > 0 else None
    eos = tokenizer.eos_token_id
    for length, group in sorted(by_length.items(), reverse=True):
        budget = min(max_new_tokens, info.max_length - length)
        for start in range(0, len(group), batch_size):
            batch = group[start:start + batch_size]
            texts = _generate_batch(model, tokenizer, torch.tensor([encoded[i] for i in batch], device=device),
                                    until, budget, temperature, generator, eos, info, suppress_token_ids)
            for i, text in zip(batch, texts):
                outputs[i] = text
    return outputs


def _generate_batch(model, tokenizer, ids, until, budget, temperature, generator, eos, info,
                    suppress_token_ids: Sequence[int] = ()) -> list[str]:
    rows = list(range(ids.shape[0]))  # original row of each live batch row
    generated: list[list[int]] = [[] for _ in rows]
    texts = [""] * len(rows)
    past = None
    sequence = ids  # used when the model has no cache
    step_input = ids
    for _ in range(budget):
        if info.kv_cache:
            logits, past = _forward(model, step_input, info, past=past, keep=1, cache=True)
        else:
            logits, _ = _forward(model, sequence, info, keep=1)
        last = logits[:, -1]
        if suppress_token_ids:
            last = last.index_fill(-1, torch.tensor(list(suppress_token_ids), device=last.device), float("-inf"))
        next_tokens = sample_next(last, temperature, generator)
        keep = []
        for live, token in enumerate(next_tokens.tolist()):
            row = rows[live]
            generated[row].append(token)
            text = tokenizer.decode(generated[row], skip_special_tokens=False)
            done = token == eos or any(stop and stop in text for stop in until)
            texts[row] = text
            if not done:
                keep.append(live)
        if not keep:
            break
        if len(keep) < len(rows):
            index = torch.tensor(keep, device=ids.device)
            rows = [rows[k] for k in keep]
            next_tokens = next_tokens.index_select(0, index)
            sequence = sequence.index_select(0, index)
            if past is not None:
                past = _reorder_cache(past, index)
        step_input = next_tokens.unsqueeze(-1)
        sequence = torch.cat([sequence, step_input], dim=1)
    eos_text = tokenizer.decode([eos]) if eos is not None else None
    return [_truncate_at_stop(text, (*until, eos_text) if eos_text else until) for text in texts]


@torch.no_grad()
def perplexity(model, tokenizer, texts: Sequence[str], *, max_length: int | None = None,
               stride: int | None = None, max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS) -> float:
    """Token-level perplexity of the texts joined by blank lines, with a sliding window.

    Each window spans up to ``max_length`` tokens and advances by ``stride``; only the tokens not
    scored by an earlier window count, each conditioned on up to ``max_length - 1`` earlier tokens.
    Every token except the first is scored exactly once: exp(total NLL / scored tokens).
    """
    info = probe_model(model, tokenizer)
    max_length = max_length or info.max_length
    stride = stride or max_length // 2
    if not 0 < stride <= max_length:
        raise ValueError(f"stride must be in (0, max_length={max_length}], got {stride}")
    if max_length > info.max_length:
        raise ValueError(f"max_length={max_length} exceeds the model's {info.max_length} positions")
    ids = torch.tensor(encode(tokenizer, "\n\n".join(texts)), device=model_device(model))
    if ids.numel() < 2:
        raise ValueError("perplexity needs at least two tokens of text")
    windows, previous_end = [], 1  # (begin, end, first target) of each window; token 0 is never predicted
    for begin in range(0, ids.numel(), stride):
        end = min(begin + max_length, ids.numel())
        windows.append((begin, end, max(previous_end, begin + 1)))
        previous_end = end
        if end == ids.numel():
            break
    # Consecutive windows of one length and target count (all but the first and the last) run as one batch of up to
    # max_batch_tokens positions: each row gives the logits it gives alone, and the sums are taken per window in
    # order, so the result is the one-window-at-a-time result, in fewer, larger passes.
    per_batch = max(1, max_batch_tokens // max_length)
    shape = lambda window: (window[1] - window[0], window[1] - window[2])  # noqa: E731  (length, targets)
    total_nll, scored, start = 0.0, 0, 0
    while start < len(windows):
        stop = start + 1
        while stop < len(windows) and stop - start < per_batch and shape(windows[stop]) == shape(windows[start]):
            stop += 1
        group = windows[start:stop]
        targets = shape(group[0])[1]
        # Only the positions that predict new targets: the last targets + 1, minus the final one.
        logits, _ = _forward(model, torch.stack([ids[begin:end] for begin, end, _ in group]), info, keep=targets + 1)
        for row, (_, end, first) in enumerate(group):
            total_nll -= float(_token_logprobs(logits[row, :targets], ids[first:end]).sum())
            scored += targets
        start = stop
    return math.exp(total_nll / scored)
