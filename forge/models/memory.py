"""Titans neural long-term memory: fast weights trained inside the forward pass by their own surprise."""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import initialization as init

from .config import CognateConfig

MEMORY_INIT_SEED = 0  # seed of the fixed random features W1_0 shared by every model


def _call(function, *args):
    return function(*args)


def _chunk_rates(lr: torch.Tensor, log_eta: torch.Tensor, log_keep: torch.Tensor):
    """The gates' coefficients of chunk writes, for (..., C) gates of chunks of C tokens (see ``NeuralMemory``).

    Per-token gradients g_t enter the chunk's end state as M_C = A M_0 + b S_0 - sum_i c_i g_i and
    S_C = e S_0 - sum_i d_i g_i, where c_i = lr_i * sum_{t>=i} keep(t+1..C) * eta(i+1..t) and
    d_i = lr_i * eta(i+1..C). Returns c, d (..., C) and the memory decay A, momentum-into-memory b and
    momentum decay e (...)."""
    cum_eta = torch.cumsum(log_eta, dim=-1)
    cum_keep = torch.cumsum(log_keep, dim=-1)
    keep_after = cum_keep[..., -1:] - cum_keep  # log prod_{j>t} (1 - alpha_j)
    log_e = keep_after[..., :, None] + cum_eta[..., :, None] - cum_eta[..., None, :]
    size = lr.shape[-1]
    earlier = torch.ones(size, size, dtype=torch.bool, device=lr.device).triu(1)  # [t, i]: t < i
    e = torch.exp(log_e.masked_fill(earlier, float("-inf")))  # (..., t, i)
    c = lr * e.sum(dim=-2)
    d = lr * torch.exp(cum_eta[..., -1:] - cum_eta)
    mem_decay = torch.exp(cum_keep[..., -1])
    mom_into_mem = torch.exp(keep_after + cum_eta).sum(dim=-1)
    mom_decay = torch.exp(cum_eta[..., -1])
    return c, d, mem_decay, mom_into_mem, mom_decay


def _read(q: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """M(q) = q + W2 silu(W1 q) for a chunk of queries (B, C, dim)."""
    return q + F.silu(q @ w1.transpose(1, 2)) @ w2.transpose(1, 2)


class NeuralMemory(nn.Module):
    """A per-sequence 2-layer MLP memory ``M(k) = k + W2 silu(W1 k)`` written by gradient descent.

    For each token t (key k_t, value v_t, from the layer input) the associative loss
    ``l_t = 0.5 * ||M(k_t) - v_t||^2`` gives the surprise gradient g_t, and with input-dependent gates
    from ``gates`` (learning rate theta_t in (0, memory_lr / ltm_slots), momentum eta_t and forgetting
    alpha_t in (0, 1)):

        S_t = eta_t * S_{t-1} - theta_t * g_t          M_t = (1 - alpha_t) * M_{t-1} + S_t

Two guards keep this inner gradient descent stable at any length: each chunk's step is capped below the
divergence limit of its own curvature, and the fast weights and momenta are bounded in norm
(``memory_max_norm`` x sqrt(slots)).

    Updates are chunk-wise (Titans sec. 3.2): inside a chunk all g_t are taken at the chunk's start weights,
    so they are computed in parallel and the two linear recurrences are summed in closed form; chunks are
    processed in order. Tokens of chunk c read ``M(q_t)`` from the weights left by chunks < c, so the memory
    is causal; the current chunk is covered by sliding-window attention (chunk <= window).

    The fast weights start on every call from fixed random features ``W1_0`` (seeded, not learned) and
    ``W2_0 = 0`` (so M starts as the identity) and are never stored on the module. Keeping them out of the
    parameters makes ``ltm_slots`` a capacity setting that leaves parameter shapes unchanged, so models
    with different capacities can still be merged weight by weight.
    """

    def __init__(self, config: CognateConfig):
        super().__init__()
        self.slots = config.ltm_slots
        self.dim = config.memory_dim
        self.chunk = config.memory_chunk_size
        self.recompute = config.activation_checkpointing != "none"
        self.lr = config.memory_lr / config.ltm_slots  # keep the step size independent of capacity
        self.max_norm = config.memory_max_norm * math.sqrt(config.ltm_slots)  # W1_0's norm is ~sqrt(slots)
        self.query_proj = nn.Linear(config.hidden_size, self.dim, bias=False)
        self.key_proj = nn.Linear(config.hidden_size, self.dim, bias=False)
        self.value_proj = nn.Linear(config.hidden_size, self.dim, bias=False)
        self.out_proj = nn.Linear(self.dim, config.hidden_size, bias=False)
        self.gates = nn.Linear(config.hidden_size, 3, bias=True)  # logits of (lr, momentum, forget)
        self.register_buffer("init_w1", torch.empty(self.slots, self.dim), persistent=False)
        self.reset_parameters()

    def initial_w1(self) -> torch.Tensor:
        """The fixed random first-layer features W1_0 (slots, dim), the same for every model and call."""
        generator = torch.Generator().manual_seed(MEMORY_INIT_SEED)
        return torch.randn(self.slots, self.dim, generator=generator) / math.sqrt(self.dim)

    def reset_parameters(self) -> None:
        """Gate biases and the W1_0 buffer, via ``transformers.initialization`` (keeps loaded weights)."""
        init.copy_(self.init_w1, self.initial_w1())
        # gate logits (lr, momentum, forget) start at sigmoid = 0.5, ~0.88, ~0.02
        init.copy_(self.gates.bias, torch.tensor([0.0, 2.0, -4.0]))

    def forward(self, hidden: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """hidden (B, n, d) normalised layer input, valid (B, n) bool or None -> memory read (B, n, d)."""
        bsz, n, _ = hidden.shape
        q, k, v, lr, log_eta, log_keep = self._project(hidden)
        if valid is not None:  # padding neither writes, decays nor dampens momentum
            lr = lr * valid
            log_eta = log_eta * valid
            log_keep = log_keep * valid
        pad = -n % self.chunk
        if pad:
            q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
            lr, log_eta, log_keep = (F.pad(t, (0, pad)) for t in (lr, log_eta, log_keep))
        nc = (n + pad) // self.chunk
        split = lambda t: t.view(bsz, nc, self.chunk, *t.shape[2:]).unbind(1)  # noqa: E731
        w1 = self.init_w1.to(q.dtype).expand(bsz, -1, -1)
        w2 = q.new_zeros(bsz, self.dim, self.slots)
        s1 = torch.zeros_like(w1)
        s2 = torch.zeros_like(w2)
        # Under activation checkpointing each chunk's (B, chunk, slots) intermediates are recomputed in backward
        # instead of kept: only the (B, slots, dim) fast-weight states between chunks stay alive.
        recompute = partial(checkpoint, use_reentrant=False) if self.recompute and torch.is_grad_enabled() else _call
        # the gates' closed-form coefficients of every chunk at once: they do not depend on the fast weights
        rates = _chunk_rates(*(t.view(bsz, nc, self.chunk) for t in (lr, log_eta, log_keep)))
        reads = []
        for index, (qc, kc, vc) in enumerate(zip(*map(split, (q, k, v)))):
            reads.append(recompute(_read, qc, w1, w2))
            if index < nc - 1:  # nothing reads the state the last chunk would leave
                w1, w2, s1, s2 = recompute(self._write, w1, w2, s1, s2, kc, vc,
                                           *(rate[:, index] for rate in rates))
        read = torch.cat(reads, dim=1)[:, :n]
        return self.out_proj(read)

    def empty_cache(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> "MemoryCache":
        """The decoding state of one pass before any token: the initial fast weights, an empty chunk."""
        w1 = self.init_w1.to(device=device, dtype=dtype).repeat(batch_size, 1, 1)
        w2 = torch.zeros(batch_size, self.dim, self.slots, device=device, dtype=dtype)
        chunk = torch.zeros(batch_size, self.chunk + 1, self.dim, device=device, dtype=dtype)
        gates = torch.zeros(batch_size, self.chunk + 1, device=device, dtype=torch.float32)
        return MemoryCache(w1=w1, w2=w2, s1=torch.zeros_like(w1), s2=torch.zeros_like(w2), keys=chunk,
                           values=chunk.clone(), lr=gates, log_eta=gates.clone(), log_keep=gates.clone())

    def forward_cached(self, hidden: torch.Tensor, plan: "ChunkPlan", cache: "MemoryCache") -> torch.Tensor:
        """``forward`` for m new columns after the tokens in ``cache`` (updated in place), by ``plan``.

        Each row's tokens read the fast weights its completed chunks left; a row's chunk is written when
        its ``chunk``-th token arrives. Padding columns neither read for anyone nor enter a chunk.
        """
        q, k, v, lr, log_eta, log_keep = self._project(hidden)
        reads = []
        for start, end, written in plan.segments:
            reads.append(_read(q[:, start:end], cache.w1, cache.w2))
            slots = plan.slots[:, start:end]
            for buffer, new in ((cache.keys, k), (cache.values, v)):
                buffer.scatter_(1, slots[..., None].expand(-1, -1, self.dim), new[:, start:end])
            for buffer, new in ((cache.lr, lr), (cache.log_eta, log_eta), (cache.log_keep, log_keep)):
                buffer.scatter_(1, slots, new[:, start:end])
            if written is not None:
                chunk = [buffer[written, :self.chunk] for buffer in
                         (cache.keys, cache.values, cache.lr, cache.log_eta, cache.log_keep)]
                state = self._write(cache.w1[written], cache.w2[written], cache.s1[written], cache.s2[written],
                                    *chunk[:2], *_chunk_rates(*chunk[2:]))
                for name, new in zip(("w1", "w2", "s1", "s2"), state):
                    getattr(cache, name)[written] = new
        return self.out_proj(torch.cat(reads, dim=1))

    def _project(self, hidden: torch.Tensor):
        """Per token: normalised query and key, value, and the float32 gates (learning rate, log momentum,
        log(1 - forget))."""
        q = F.normalize(self.query_proj(hidden), dim=-1)
        k = F.normalize(self.key_proj(hidden), dim=-1)
        v = self.value_proj(hidden)
        lr_logit, eta_logit, forget_logit = self.gates(hidden).float().unbind(-1)
        return q, k, v, torch.sigmoid(lr_logit) * self.lr, F.logsigmoid(eta_logit), F.logsigmoid(-forget_logit)

    def _write(self, w1, w2, s1, s2, k, v, c, d, mem_decay, mom_into_mem, mom_decay):
        """One chunk of surprise-driven updates, closed form of the momentum and forgetting recurrences, with the
        chunk's ``_chunk_rates``."""
        pre = k @ w1.transpose(1, 2)  # (B, C, slots)
        act = F.silu(pre)
        err = k + act @ w2.transpose(1, 2) - v  # dl/dM(k), (B, C, dim)
        sig = torch.sigmoid(pre)
        d_pre = (err @ w2) * sig * (1 + pre * (1 - sig))  # dl/dpre through silu
        # Per-token gradients: g2_t = err_t act_t^T (dim x slots), g1_t = d_pre_t k_t^T (slots x dim).
        mem_decay, mom_into_mem, mom_decay = (t[:, None, None] for t in (mem_decay, mom_into_mem, mom_decay))
        # Step cap (normalised LMS): along its steepest direction the chunk's summed step, into the memory and
        # into the momentum, stays <= 1, below gradient descent's divergence limit of 2 on this quadratic.
        # Without it the learned gates reach 10-70 and the fast weights blow up a few chunks past the
        # training length. curvature_t bounds ||dM(k_t)/d(W1, W2)||^2 (|silu'| <= 1.1, ||k_t|| <= 1).
        curvature = act.pow(2).sum(-1) + 1.21 * w2.pow(2).sum((1, 2))[:, None] * k.pow(2).sum(-1)
        step = ((c + d) * curvature).sum(dim=1, keepdim=True)
        cap = 1.0 / step.clamp_min(1.0)
        c, d = (c * cap).to(k.dtype)[..., None], (d * cap).to(k.dtype)[..., None]
        # sum_i c_i err_i act_i^T = (c * err)^T act: the coefficients scale the narrow (B, C, dim) side, and the
        # memory (c) and momentum (d) sums share one matmul each.
        g2_mem, g2_mom = (torch.cat([err * c, err * d], dim=2).transpose(1, 2) @ act).split(self.dim, dim=1)
        g1_mem, g1_mom = (d_pre.transpose(1, 2) @ torch.cat([k * c, k * d], dim=2)).split(self.dim, dim=2)
        w1_new = mem_decay * w1 + mom_into_mem * s1 - g1_mem
        w2_new = mem_decay * w2 + mom_into_mem * s2 - g2_mem
        s1_new = mom_decay * s1 - g1_mom
        s2_new = mom_decay * s2 - g2_mom
        return tuple(self._bounded(t) for t in (w1_new, w2_new, s1_new, s2_new))

    def _bounded(self, fast: torch.Tensor) -> torch.Tensor:
        """``fast`` scaled down where its Frobenius norm exceeds ``max_norm``: momentum can still push the fast
        weights up chunk after chunk, and bounded weights keep every read finite at any sequence length."""
        norm = fast.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None]
        return fast * (self.max_norm / norm).clamp(max=1.0)


@dataclass
class MemoryCache:
    """Neural-memory state of one stack pass: fast weights after the completed chunks, and the partial chunk.

    The chunk buffers hold ``chunk + 1`` slots: a row's tokens fill slots 0 .. chunk-1 in order, and padding
    columns are scattered into the last slot, which is never read.
    """

    w1: torch.Tensor  # (B, slots, dim)
    w2: torch.Tensor  # (B, dim, slots)
    s1: torch.Tensor  # momentum of w1
    s2: torch.Tensor  # momentum of w2
    keys: torch.Tensor  # (B, chunk + 1, dim) normalised keys of the partial chunk
    values: torch.Tensor  # (B, chunk + 1, dim)
    lr: torch.Tensor  # (B, chunk + 1) float32 learning-rate gates
    log_eta: torch.Tensor  # (B, chunk + 1) float32 log momentum gates
    log_keep: torch.Tensor  # (B, chunk + 1) float32 log (1 - forget) gates

    def select(self, index: torch.Tensor) -> None:
        """Keep (or repeat) the batch rows ``index``."""
        for name in ("w1", "w2", "s1", "s2", "keys", "values", "lr", "log_eta", "log_keep"):
            setattr(self, name, getattr(self, name).index_select(0, index))


@dataclass
class ChunkPlan:
    """How m new columns meet the memory chunks of every row, shared by all passes over those columns.

    segments: (start, end, written) column ranges; no row completes a chunk before a segment's last column,
    so a segment's tokens read one state per row; ``written`` (device indices) are the rows whose chunk
    completes at the segment's last column, or None.
    slots: (B, m) long, the chunk slot of each column (``chunk`` for padding).
    """

    segments: list[tuple[int, int, torch.Tensor | None]]
    slots: torch.Tensor

    @classmethod
    def build(cls, valid: torch.Tensor, filled: torch.Tensor, chunk: int,
              device: torch.device) -> tuple["ChunkPlan", torch.Tensor]:
        """The plan for columns ``valid`` (B, m) bool on the CPU after rows holding ``filled`` (B,) tokens in
        their partial chunks; returns it and the rows' new ``filled``."""
        rank = valid.long().cumsum(dim=1)  # real tokens up to and including each column
        total = filled[:, None] + rank
        completes = valid & (total % chunk == 0)
        slots = torch.where(valid, (total - 1) % chunk, chunk)
        segments, start = [], 0
        for end in completes.any(dim=0).nonzero().flatten().tolist():
            segments.append((start, end + 1, completes[:, end].nonzero().flatten().to(device)))
            start = end + 1
        if start < valid.shape[1]:
            segments.append((start, valid.shape[1], None))
        return cls(segments=segments, slots=slots.to(device)), (filled + rank[:, -1]) % chunk
