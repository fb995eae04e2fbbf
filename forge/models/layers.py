"""Building blocks of the Cognate decoder layer: RMSNorm, RoPE, sliding-window attention, SwiGLU MLP."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

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

    The sequence is cut into blocks of w queries; each block attends to its own block and the previous one
    (2w keys) under a causal+window mask, through ``scaled_dot_product_attention``. ``max_attn_logit`` holds
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
        self.max_attn_logit: float = float("-inf")

    def forward(self, hidden: torch.Tensor, positions: torch.Tensor, key_valid: torch.Tensor | None) -> torch.Tensor:
        """hidden (B, n, d), positions (B, n) int, key_valid (B, n) bool or None (False = padding key)."""
        bsz, n, _ = hidden.shape
        q, k, v = (proj(hidden).view(bsz, n, self.num_heads, self.head_dim).transpose(1, 2)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        cos, sin = rope_cos_sin(positions, self.head_dim, self.rope_theta, q.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        qb, kb, vb, mask = _window_blocks(q, k, v, key_valid, self.window)
        self._record_max_logit(qb, kb, mask)
        out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask)  # (B*nb, H, bs, hd)
        nb, bs = out.shape[0] // bsz, out.shape[2]
        out = out.view(bsz, nb, self.num_heads, bs, self.head_dim).permute(0, 1, 3, 2, 4)
        out = out.reshape(bsz, nb * bs, self.num_heads * self.head_dim)[:, :n]
        return self.o_proj(out)

    @torch.no_grad()
    def _record_max_logit(self, qb: torch.Tensor, kb: torch.Tensor, mask: torch.Tensor) -> None:
        scores = torch.matmul(qb, kb.transpose(-1, -2)).masked_fill_(~mask, float("-inf"))
        value = scores.max().item() / math.sqrt(self.head_dim)
        self.max_attn_logit = max(self.max_attn_logit, value)


def _window_blocks(q, k, v, key_valid, window: int):
    """Reshape (B, H, n, hd) tensors into query blocks and their key blocks, plus the boolean mask.

    Returns qb (B*nb, H, bs, hd), kb/vb (B*nb, H, kbs, hd) and mask (B*nb, 1, bs, kbs), True = attend.
    For n <= window a single block of n queries over its own n keys is used (no padding waste).
    """
    bsz, heads, n, hd = q.shape
    device = q.device
    if key_valid is None:
        key_valid = torch.ones(bsz, n, dtype=torch.bool, device=device)
    if n <= window:
        idx = torch.arange(n, device=device)
        causal = idx[None, :] <= idx[:, None]  # (n, n): key j <= query i, all within the window
        self_key = idx[None, :] == idx[:, None]
        mask = causal & (key_valid[:, None, None, :] | self_key)
        return q, k, v, mask
    nb = -(-n // window)
    pad = nb * window - n

    def blocks(t):
        t = F.pad(t, (0, 0, 0, pad))  # (B, H, nb*w, hd)
        return t.view(bsz, heads, nb, window, hd).transpose(1, 2)  # (B, nb, H, w, hd)

    qb, kcur, vcur = blocks(q), blocks(k), blocks(v)
    kprev = F.pad(kcur, (0, 0, 0, 0, 0, 0, 1, 0))[:, :-1]  # block b-1 (zeros before block 0)
    vprev = F.pad(vcur, (0, 0, 0, 0, 0, 0, 1, 0))[:, :-1]
    kb, vb = torch.cat([kprev, kcur], dim=3), torch.cat([vprev, vcur], dim=3)  # (B, nb, H, 2w, hd)

    i = torch.arange(window, device=device)[:, None]
    j = torch.arange(2 * window, device=device)[None, :]
    in_window = (j > i) & (j <= i + window)  # query at w+i (block coords) sees keys w+i-(w-1) .. w+i
    self_key = j == i + window
    valid = F.pad(key_valid, (0, pad)).view(bsz, nb, window)
    valid_prev = F.pad(valid, (0, 0, 1, 0))[:, :-1]  # block 0 has no previous block: all invalid
    keys_valid = torch.cat([valid_prev, valid], dim=2)  # (B, nb, 2w)
    mask = in_window & (keys_valid[:, :, None, :] | self_key)  # (B, nb, w, 2w)
    flat = lambda t: t.reshape(bsz * nb, *t.shape[2:])  # noqa: E731
    return flat(qb), flat(kb), flat(vb), mask.reshape(bsz * nb, 1, window, 2 * window)


class SwiGLU(nn.Module):
    """Gated feed-forward: down_proj(silu(gate_proj(x)) * up_proj(x))."""

    def __init__(self, config: CognateConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(hidden)) * self.up_proj(hidden))
