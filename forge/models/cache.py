"""Incremental decoding of the Cognate model: ``CognateCache`` and the forward pass that continues from it.

Every stack pass (ACT step s, refinement r, update u: the latent updates then the answer update, layer l)
keeps its own state, because each pass reads the previous pass's outputs of the earlier tokens: the last
``sliding_window - 1`` keys/values after RoPE (``WindowCache``), and the neural memory's fast weights after
the completed chunks with the partial chunk's keys, values and gates, written when its last token arrives
(``MemoryCache``). A call appends m columns to every row; prefill is one call with the whole prompt.

ACT. The uncached forward runs step s for every token while any token still runs, but a token's step-s
states depend only on the step-(s-1) states of the tokens up to it, and its output only on the steps it
ran. So a call runs step s only while one of its new tokens still runs; columns that skipped step s wait
as that step's pending inputs (x, y and z after step s-1) and run it, in order, with the first later call
that needs step s. The logits equal the uncached forward's at every position.

Padding: left padding only (each row: padding columns, then tokens), as batched ``generate()`` makes it.
The memory chunks of a row start at its first token, so rows with different padding complete their
chunks at different columns (``ChunkPlan``). Decoding needs no gradient: it runs under ``torch.no_grad()``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import CognateConfig
from .layers import CachedWindowPlan, WindowCache
from .memory import ChunkPlan, MemoryCache


@dataclass
class _Columns:
    """Inputs of one ACT step for a run of columns: x, and y, z as the previous step left them."""

    x: torch.Tensor  # (B, p, d) normalised embeddings
    y: torch.Tensor  # (B, p, d)
    z: torch.Tensor  # (B, p, d)
    positions: torch.Tensor  # (B, p) RoPE positions
    valid: torch.Tensor  # (B, p) bool on the model's device: False for padding
    valid_cpu: torch.Tensor  # the same on the CPU (plans the memory chunks without a device sync per pass)

    def then(self, later: "_Columns") -> "_Columns":
        """These columns followed by ``later``."""
        return _Columns(*(torch.cat([a, b], dim=1) for a, b in zip(self._fields(), later._fields())))

    def select(self, index: torch.Tensor) -> "_Columns":
        return _Columns(*(t.index_select(0, index if t.device == index.device else index.to(t.device))
                          for t in self._fields()))

    def _fields(self) -> tuple[torch.Tensor, ...]:
        return self.x, self.y, self.z, self.positions, self.valid, self.valid_cpu


@dataclass
class _LayerState:
    window: WindowCache
    memory: MemoryCache

    def select(self, index: torch.Tensor) -> None:
        self.window.select(index)
        self.memory.select(index)


class _StepState:
    """Everything ACT step s keeps: every pass's layer states, the rows' chunk fill, and pending columns."""

    def __init__(self, model, batch_size: int, device: torch.device, dtype: torch.dtype):
        cfg: CognateConfig = model.config
        passes = cfg.trm_refinements * cfg.passes_per_refinement
        self.passes = [[_LayerState(layer.self_attn.empty_cache(batch_size, device, dtype),
                                    layer.memory.empty_cache(batch_size, device, dtype))
                        for layer in model.layers] for _ in range(passes)]
        self.filled = torch.zeros(batch_size, dtype=torch.long)  # tokens in each row's partial memory chunk
        # validity of the window's cached keys, which every pass's WindowCache holds: False for padding and for
        # slots before the first column
        self.key_valid = torch.zeros(batch_size, cfg.sliding_window - 1, dtype=torch.bool, device=device)
        self.pending: _Columns | None = None  # columns that ran step s-1 but not yet step s

    def select(self, index: torch.Tensor) -> None:
        for layers in self.passes:
            for state in layers:
                state.select(index)
        self.filled = self.filled[index.cpu()]
        self.key_valid = self.key_valid.index_select(0, index)
        if self.pending is not None:
            self.pending = self.pending.select(index)


class CognateCache:
    """Decoding state of a batch of sequences for ``CognateModel`` (see the module doc).

    Pass it back with ``cache=`` (or ``past_key_values=``) and only the new tokens. Calls update it in
    place; ``reorder_cache`` keeps or repeats rows (beam search, rows leaving a batch).
    """

    is_compileable = False  # transformers.generate: no static shapes to compile against
    is_croppable = False  # the memory writes cannot be undone

    def __init__(self):
        self.length = 0  # columns seen (padding included), as attention masks count them
        self.seen: torch.Tensor | None = None  # (B,) long on the CPU: real tokens of each row
        self.steps: list[_StepState] = []

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Columns seen so far, padding included (transformers slices the new inputs by it)."""
        return self.length

    def reorder_cache(self, index: torch.Tensor) -> None:
        """Keep (or repeat) the batch rows ``index``, in place."""
        for step in self.steps:
            step.select(index)
        if self.seen is not None:
            self.seen = self.seen[index.cpu()]

    def _step(self, model, index: int, batch_size: int, device: torch.device, dtype: torch.dtype) -> _StepState:
        while len(self.steps) <= index:
            self.steps.append(_StepState(model, batch_size, device, dtype))
        return self.steps[index]

    def _new_columns(self, attention_mask: torch.Tensor | None, batch_size: int, m: int) -> torch.Tensor:
        """The new columns' validity (B, m) bool on the CPU, checked against what the cache holds."""
        if self.seen is None:
            self.seen = torch.zeros(batch_size, dtype=torch.long)
        if self.seen.shape[0] != batch_size:
            raise ValueError(f"the cache holds {self.seen.shape[0]} rows but the inputs have {batch_size}: "
                             "pass the same rows, or select them first with cache.reorder_cache(index)")
        if attention_mask is None:
            return torch.ones(batch_size, m, dtype=torch.bool)
        if tuple(attention_mask.shape) != (batch_size, self.length + m):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; with a cache it covers the "
                             f"cached columns and the new ones: ({batch_size}, {self.length} + {m})")
        mask = attention_mask.to(device="cpu", dtype=torch.bool)
        if not torch.equal(mask[:, :self.length].sum(dim=1), self.seen):
            raise ValueError("attention_mask disagrees with the cache on the earlier columns: pass the mask of the "
                             "whole sequence the cache was built from, extended by the new columns")
        new = mask[:, self.length:]
        started = (new.long().cumsum(dim=1) > 0) | (self.seen > 0)[:, None]
        if bool((started & ~new).any()):
            raise ValueError("Cognate's cache supports left padding only (in each row, padding then tokens); "
                             "for padding after a token, call the model on whole sequences with use_cache=False")
        return new


def act_update(state: dict[str, torch.Tensor], y: torch.Tensor, halt_prob: torch.Tensor, step: int,
               config: CognateConfig) -> torch.Tensor:
    """One ACT step's bookkeeping on ``state`` (running, cum_prob, counts, ponder, mixed), for
    ``CognateModel.forward`` and ``decode``; returns the step's per-token weights."""
    running, cum_prob = state["running"], state["cum_prob"]
    halts_now = running & ((cum_prob + halt_prob >= config.act_threshold) | (step == config.act_max_steps))
    remainder = 1.0 - cum_prob
    weight = torch.where(halts_now, remainder, torch.where(running, halt_prob, 0.0))
    state["ponder"] = torch.where(halts_now, step + remainder, state["ponder"])
    state["cum_prob"] = cum_prob + torch.where(running, halt_prob, 0.0)
    state["counts"] = state["counts"] + running.to(state["counts"].dtype)
    state["running"] = running & ~halts_now
    state["mixed"] = state["mixed"] + weight.to(y.dtype)[..., None] * y
    return weight


def _run_step(model, step: _StepState, columns: _Columns) -> tuple[torch.Tensor, torch.Tensor]:
    """The refinements of one ACT step over ``columns``, continuing that step's passes; returns (y, z)."""
    cfg = model.config
    chunk_plan, filled = ChunkPlan.build(columns.valid_cpu, step.filled, cfg.memory_chunk_size, columns.x.device)
    window_plan = CachedWindowPlan.build(columns.positions, step.key_valid, columns.valid, cfg)
    passes = iter(step.passes)
    x, y, z = columns.x, columns.y, columns.z
    for _ in range(cfg.trm_refinements):
        for _ in range(cfg.trm_latent_updates):
            z = _stack(model, x + y + z, next(passes), window_plan, chunk_plan)
        y = _stack(model, y + z, next(passes), window_plan, chunk_plan)
    step.filled, step.key_valid = filled, window_plan.kept_valid()
    return y, z


def _stack(model, hidden: torch.Tensor, layers: list[_LayerState], window_plan: CachedWindowPlan,
           chunk_plan: ChunkPlan):
    for layer, state in zip(model.layers, layers):
        hidden = layer.forward_cached(hidden, window_plan, state.window, state.memory, chunk_plan)
    return model.norm(hidden)


def decode(model, embeds: torch.Tensor, attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None,
           cache: CognateCache | None):
    """``CognateModel``'s forward for new columns ``embeds`` (B, m, d) after ``cache`` (a new one when None).

    Returns a ``CognateModelOutput`` over the new columns, with the updated cache.
    """
    from .cognate import CognateModelOutput  # cognate imports this module

    if torch.is_grad_enabled():
        raise RuntimeError("Cognate's cache is for decoding: call it under torch.no_grad() (or "
                           "torch.inference_mode()); training runs whole sequences with use_cache=False")
    cfg = model.config
    bsz, m, _ = embeds.shape
    if m < 1:
        raise ValueError("decoding with a cache needs at least one new token per call")
    cache = CognateCache() if cache is None else cache
    valid_cpu = cache._new_columns(attention_mask, bsz, m)
    if position_ids is None:
        positions = (cache.seen[:, None] + valid_cpu.long().cumsum(dim=1) - 1).clamp(min=0).to(embeds.device)
    else:
        positions = position_ids[:, -m:]
    cache.seen = cache.seen + valid_cpu.sum(dim=1)
    cache.length += m
    valid = valid_cpu.to(embeds.device)
    x = model.embed_norm(embeds)
    carry = _Columns(x, x, torch.zeros_like(x), positions, valid, valid_cpu)
    act = {"running": valid.clone(), "cum_prob": x.new_zeros(bsz, m), "counts": x.new_zeros(bsz, m),
           "ponder": x.new_zeros(bsz, m), "mixed": torch.zeros_like(x)}
    states, weights = [], []
    for index in range(cfg.act_max_steps):
        step = cache._step(model, index, bsz, x.device, x.dtype)
        if index > 0 and not bool(act["running"].any()):
            step.pending = carry if step.pending is None else step.pending.then(carry)
            break
        if step.pending is not None:
            carry, step.pending = step.pending.then(carry), None
        y, z = _run_step(model, step, carry)
        carry = _Columns(carry.x, y, z, carry.positions, carry.valid, carry.valid_cpu)
        y_new = y[:, -m:]
        halt_prob = torch.sigmoid(model.halt_head(y_new).squeeze(-1).float())
        weights.append(act_update(act, y_new, halt_prob, index + 1, cfg))
        states.append(y_new)
    n_real = valid.sum().clamp(min=1)
    return CognateModelOutput(
        last_hidden_state=act["mixed"],
        step_hidden_states=tuple(states),
        step_weights=torch.stack(weights),
        step_counts=act["counts"],
        ponder_cost=act["ponder"].sum() / n_real,
        halting_steps=float(act["counts"].sum() / n_real),
        computed_steps=len(states),
        cache=cache,
    )
