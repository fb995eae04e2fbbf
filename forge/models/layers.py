"""Building blocks of the Cognate decoder layer: RMSNorm, RoPE, sliding-window attention, SwiGLU MLP."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

from .config import CognateConfig


class CognateRMSNorm(nn.Module):
    """Root-mean-square layer norm with a learned gain."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(hidden, (hidden.shape[-1],), self.weight, self.eps)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos/sin tables of shape (B, 1, n, head_dim) for integer ``positions`` (B, n).

    Computed per call (no buffers) so that nothing position-related is stored in the checkpoint.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    angles = positions.to(torch.float32)[..., None] * inv_freq  # (B, n, head_dim/2)
    angles = torch.cat([angles, angles], dim=-1)[:, None]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class SlidingWindowAttention(nn.Module):
    """Causal multi-head attention over a window of ``w`` tokens, computed in blocks: O(n*w) memory.

    On CPU the sequence is cut into blocks of w queries; each block attends to its own block and the previous one
    (2w keys) under a causal+window mask, through ``scaled_dot_product_attention``. On CUDA one compiled
    FlexAttention kernel skips the blocks outside the window instead (same mask, same result). ``max_attn_logit`` holds
    the largest pre-softmax q.k/sqrt(d) seen since the model's forward began (for the optimizer's QK-clip).
    """

    def __init__(self, config: CognateConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.window = config.sliding_window
        self.rope_theta = config.rope_theta
        width = self.num_heads * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, width, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, width, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, width, bias=False)
        self.o_proj = nn.Linear(width, config.hidden_size, bias=False)
        self._max_logit: torch.Tensor | None = None  # on the device; read (one sync) only via max_attn_logit

    @property
    def max_attn_logit(self) -> float:
        """The largest pre-softmax q.k/sqrt(d) recorded since the last reset (-inf: none)."""
        return float("-inf") if self._max_logit is None else float(self._max_logit)

    @max_attn_logit.setter
    def max_attn_logit(self, value: float) -> None:
        self._max_logit = None if value == float("-inf") else torch.tensor(float(value))

    def forward(self, hidden: torch.Tensor, plan: "WindowPlan") -> torch.Tensor:
        """hidden (B, n, d) under ``plan`` (the forward's positions, padding keys and masks)."""
        bsz, n, _ = hidden.shape
        q, k, v = (proj(hidden).view(bsz, n, self.num_heads, self.head_dim).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        cos, sin = plan.cos.to(q.dtype), plan.sin.to(q.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        qb, kb, vb = _window_blocks(q, k, v, self.window)
        if plan.record_max_logit:
            self._record_max_logit(qb, kb, plan.mask)
        if plan.block_mask is not None:
            out = _flex_attention()(q, k, v, block_mask=plan.block_mask)  # (B, H, n, hd)
            return self.o_proj(out.transpose(1, 2).reshape(bsz, n, self.num_heads * self.head_dim))
        out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=plan.mask)  # (B*nb, H, bs, hd)
        nb, bs = out.shape[0] // bsz, out.shape[2]
        out = out.view(bsz, nb, self.num_heads, bs, self.head_dim).permute(0, 1, 3, 2, 4)
        out = out.reshape(bsz, nb * bs, self.num_heads * self.head_dim)[:, :n]
        return self.o_proj(out)

    def empty_cache(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> "WindowCache":
        """The decoding state of one pass before any token: ``window - 1`` empty key slots (their validity, the
        same for every pass, is the decoding step's: ``CachedWindowPlan``)."""
        shape = (batch_size, self.num_heads, self.window - 1, self.head_dim)
        return WindowCache(keys=torch.zeros(shape, device=device, dtype=dtype),
                           values=torch.zeros(shape, device=device, dtype=dtype))

    def forward_cached(self, hidden: torch.Tensor, plan: "CachedWindowPlan", cache: "WindowCache") -> torch.Tensor:
        """``forward`` for m new columns that follow the columns in ``cache`` (updated in place), under ``plan``.

        hidden (B, m, d). Does not record ``max_attn_logit`` (a training statistic; decoding runs without grad).
        """
        bsz, m, _ = hidden.shape
        q, k, v = (proj(hidden).view(bsz, m, self.num_heads, self.head_dim).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        cos, sin = plan.cos.to(q.dtype), plan.sin.to(q.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        keys, values = torch.cat([cache.keys, k], dim=2), torch.cat([cache.values, v], dim=2)
        out = _attend_after_cache(q, keys, values, plan.mask, self.window)
        first_kept = keys.shape[2] - (self.window - 1)
        cache.keys, cache.values = keys[:, :, first_kept:].contiguous(), values[:, :, first_kept:].contiguous()
        return self.o_proj(out.transpose(1, 2).reshape(bsz, m, self.num_heads * self.head_dim))

    @torch.no_grad()
    @torch.compiler.disable  # a statistic kept on the module: runs eagerly between the compiled graphs
    def _record_max_logit(self, qb: torch.Tensor, kb: torch.Tensor, mask: torch.Tensor) -> None:
        scores = torch.matmul(qb, kb.transpose(-1, -2)).masked_fill_(~mask, float("-inf"))
        value = scores.amax().float() / math.sqrt(self.head_dim)
        # kept as a tensor: no host sync per layer call; the optimizer reads it once per step
        self._max_logit = value if self._max_logit is None else torch.maximum(self._max_logit.to(value), value)


def _attention_kernel(device: torch.device) -> str:
    """"flex" (block-sparse FlexAttention, compiled) on CUDA; "blocked" (SDPA over 2w-key blocks) elsewhere,
    where compiled FlexAttention would need a C++ toolchain and its eager form materialises all n x n scores."""
    return "flex" if device.type == "cuda" else "blocked"


@functools.cache
def _flex_attention():
    return torch.compile(flex_attention, dynamic=False)


def _flex_block_mask(key_valid: torch.Tensor | None, bsz: int, n: int, window: int, device: torch.device):
    """FlexAttention's block mask for the mask of ``_window_mask``: query i sees keys i-w+1 .. i that are
    valid, and always itself."""
    if key_valid is None:
        key_valid = torch.ones(bsz, n, dtype=torch.bool, device=device)

    def in_window(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx - kv_idx < window) & (key_valid[b, kv_idx] | (kv_idx == q_idx))

    return create_block_mask(in_window, bsz, None, n, n, device=device)


def _window_blocks(q, k, v, window: int):
    """Reshape (B, H, n, hd) tensors into query blocks qb (B*nb, H, bs, hd) and their key blocks kb, vb
    (B*nb, H, kbs, hd), for the mask of ``_window_mask``. For n <= window: one block of n queries over its own n
    keys (no padding waste)."""
    bsz, heads, n, hd = q.shape
    if n <= window:
        return q, k, v
    nb = -(-n // window)
    pad = nb * window - n

    def blocks(t):
        t = F.pad(t, (0, 0, 0, pad))  # (B, H, nb*w, hd)
        return t.view(bsz, heads, nb, window, hd).transpose(1, 2)  # (B, nb, H, w, hd)

    qb, kcur, vcur = blocks(q), blocks(k), blocks(v)
    kprev = F.pad(kcur, (0, 0, 0, 0, 0, 0, 1, 0))[:, :-1]  # block b-1 (zeros before block 0)
    vprev = F.pad(vcur, (0, 0, 0, 0, 0, 0, 1, 0))[:, :-1]
    kb, vb = torch.cat([kprev, kcur], dim=3), torch.cat([vprev, vcur], dim=3)  # (B, nb, H, 2w, hd)
    flat = lambda t: t.reshape(bsz * nb, *t.shape[2:])  # noqa: E731
    return flat(qb), flat(kb), flat(vb)


def _window_mask(key_valid: torch.Tensor | None, bsz: int, n: int, window: int, device: torch.device) -> torch.Tensor:
    """The boolean mask (True = attend) of the blocks of ``_window_blocks``: (B, 1, n, n) for n <= window, else
    (B*nb, 1, w, 2w). Query i sees the valid keys among i-w+1 .. i, and always itself."""
    if key_valid is None:
        key_valid = torch.ones(bsz, n, dtype=torch.bool, device=device)
    if n <= window:
        idx = torch.arange(n, device=device)
        causal = idx[None, :] <= idx[:, None]  # (n, n): key j <= query i, all within the window
        self_key = idx[None, :] == idx[:, None]
        return causal & (key_valid[:, None, None, :] | self_key)
    nb = -(-n // window)
    pad = nb * window - n
    i = torch.arange(window, device=device)[:, None]
    j = torch.arange(2 * window, device=device)[None, :]
    in_window = (j > i) & (j <= i + window)  # query at w+i (block coords) sees keys w+i-(w-1) .. w+i
    self_key = j == i + window
    valid = F.pad(key_valid, (0, pad)).view(bsz, nb, window)
    valid_prev = F.pad(valid, (0, 0, 1, 0))[:, :-1]  # block 0 has no previous block: all invalid
    keys_valid = torch.cat([valid_prev, valid], dim=2)  # (B, nb, 2w)
    mask = in_window & (keys_valid[:, :, None, :] | self_key)  # (B, nb, w, 2w)
    return mask.reshape(bsz * nb, 1, window, 2 * window)


@dataclass
class WindowPlan:
    """What every attention call of one forward shares, built once: the recursion calls each layer
    act_max_steps x trm_refinements x (latent updates + 1) times on the same positions and padding."""

    cos: torch.Tensor  # (B, 1, n, head_dim) float32 RoPE tables of the positions
    sin: torch.Tensor
    mask: torch.Tensor  # the blocked kernel's mask (``_window_mask``); also bounds QK-clip's max logit
    block_mask: object | None  # FlexAttention's (CUDA), else None: the blocked SDPA runs
    record_max_logit: bool  # update ``max_attn_logit`` (QK-clip's statistic; evaluation forwards skip it)

    @classmethod
    def build(cls, positions: torch.Tensor, key_valid: torch.Tensor | None, config: CognateConfig,
              record_max_logit: bool) -> "WindowPlan":
        """positions (B, n) int, key_valid (B, n) bool or None (False = padding key)."""
        bsz, n = positions.shape
        device = positions.device
        cos, sin = rope_cos_sin(positions, config.head_dim, config.rope_theta, torch.float32)
        block_mask = None
        if _attention_kernel(device) == "flex":
            block_mask = _flex_block_mask(key_valid, bsz, n, config.sliding_window, device)
        return cls(cos=cos, sin=sin, mask=_window_mask(key_valid, bsz, n, config.sliding_window, device),
                   block_mask=block_mask, record_max_logit=record_max_logit)


@dataclass
class WindowCache:
    """Sliding-window attention state of one stack pass: the last ``window - 1`` columns, oldest first."""

    keys: torch.Tensor  # (B, heads, window - 1, head_dim), after RoPE
    values: torch.Tensor  # (B, heads, window - 1, head_dim)

    def select(self, index: torch.Tensor) -> None:
        """Keep (or repeat) the batch rows ``index``."""
        self.keys, self.values = self.keys.index_select(0, index), self.values.index_select(0, index)


def _attend_after_cache(q, keys, values, mask, window: int) -> torch.Tensor:
    """Attention of m queries (B, H, m, hd) over ``keys`` (B, H, window - 1 + m, hd) whose last m are their own,
    under ``mask`` (``_cached_window_mask``).

    Query i (column ``window - 1 + i`` of the keys) sees itself and the ``window - 1`` keys before it, the
    valid ones. Queries go in blocks of up to ``window``, each over its ``window - 1 + block`` keys, so a
    long prefill costs O(m * window) like ``forward`` and one new token attends to ``window`` keys.
    """
    bsz, heads, m, hd = q.shape
    if m == 1:  # one new token (every decoding step after the prompt): one block, the keys as they are
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
    size, nb, pad, span = _cached_blocks(m, window)
    q = F.pad(q, (0, 0, 0, pad)).view(bsz, heads, nb, size, hd).transpose(1, 2)
    kb = F.pad(keys, (0, 0, 0, pad)).unfold(2, span, size).permute(0, 2, 1, 4, 3)  # (B, nb, H, span, hd)
    vb = F.pad(values, (0, 0, 0, pad)).unfold(2, span, size).permute(0, 2, 1, 4, 3)
    flat = lambda t: t.reshape(bsz * nb, *t.shape[2:])  # noqa: E731
    out = F.scaled_dot_product_attention(flat(q), flat(kb), flat(vb), attn_mask=mask)
    out = out.view(bsz, nb, heads, size, hd).transpose(1, 2).reshape(bsz, heads, nb * size, hd)
    return out[:, :, :m]


def _cached_blocks(m: int, window: int) -> tuple[int, int, int, int]:
    """Query block size, block count, padding and key span of m new columns after a window's cache."""
    size = min(m, window)
    nb = -(-m // size)
    return size, nb, nb * size - m, size + window - 1


def _cached_window_mask(key_valid: torch.Tensor, m: int, window: int) -> torch.Tensor:
    """(B*nb, 1, size, span) mask of ``_attend_after_cache`` from the validity (B, window - 1 + m) of the cached
    and new keys; padded queries see only themselves."""
    bsz = key_valid.shape[0]
    size, nb, pad, span = _cached_blocks(m, window)
    past = window - 1
    valid = F.pad(key_valid, (0, pad)).unfold(1, span, size)  # (B, nb, span)
    i = torch.arange(size, device=key_valid.device)[:, None]
    j = torch.arange(span, device=key_valid.device)[None, :]
    self_key = j == i + past
    mask = (j >= i) & (j <= i + past) & (valid[:, :, None, :] | self_key)  # (B, nb, size, span)
    return mask.reshape(bsz * nb, 1, size, span)


@dataclass
class CachedWindowPlan:
    """What every attention call of one decoding step shares, built once: the RoPE tables of the new columns,
    and the validity of the window's keys, the same for every pass and layer of the step (they all saw the same
    columns)."""

    cos: torch.Tensor  # (B, 1, m, head_dim) float32
    sin: torch.Tensor
    key_valid: torch.Tensor  # (B, window - 1 + m) bool: the cached keys', then the new columns'
    mask: torch.Tensor  # ``_cached_window_mask``

    @classmethod
    def build(cls, positions: torch.Tensor, cached_valid: torch.Tensor, valid: torch.Tensor,
              config: CognateConfig) -> "CachedWindowPlan":
        """positions and valid (B, m) of the new columns; cached_valid (B, window - 1) of the cached keys."""
        cos, sin = rope_cos_sin(positions, config.head_dim, config.rope_theta, torch.float32)
        key_valid = torch.cat([cached_valid, valid], dim=1)
        return cls(cos=cos, sin=sin, key_valid=key_valid,
                   mask=_cached_window_mask(key_valid, positions.shape[1], config.sliding_window))

    def kept_valid(self) -> torch.Tensor:
        """The validity (B, window - 1) of the keys the window keeps after these columns: the next step's
        ``cached_valid``."""
        return self.key_valid[:, self.cos.shape[2]:]


class SwiGLU(nn.Module):
    """Gated feed-forward: down_proj(silu(gate_proj(x)) * up_proj(x))."""

    def __init__(self, config: CognateConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(hidden)) * self.up_proj(hidden))
