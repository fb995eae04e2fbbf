"""4-bit storage of the layers BitNet keeps in higher precision: the token embedding and the output head.

int8 rows (``forge.quant.int8``) leave a tiny model's embedding at a quarter of its float32 bytes, which is
most of what the model weighs after ternarisation (5.8x in all on the tiny preset, short of the spec's 6x).
Here each row is cut into groups of ``group_size`` weights; a group keeps one float16 scale (symmetric
scale, ``w ~ q * scale``, the one of ``CLIP_RATIOS * absmax / 7`` with the least squared error) and its values as signed 4-bit integers in [-7, 7], two to a byte (low
nibble first, stored as ``q + 8``). That is 4 + 16 / group_size bits per weight: 4.5 at group 32, against 8.25
for int8 rows. Weight-only, like the int8 rows: activations stay float; the embedding unpacks only the rows
it looks up, the head dequantizes its matrix on each call. The packed matrices are frozen parameters.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from forge.quant.int8 import frozen

QMAX = 7
OFFSET = 8  # a stored nibble is q + 8, in [1, 15]
_FP16 = torch.finfo(torch.float16)
# Candidate scales as fractions of absmax / 7: clipping a group's few largest weights buys a finer step for all
# the others; per group the ratio with the least squared error wins (11% less than absmax alone on the tiny
# preset's trained embedding).
CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)


def padded_columns(columns: int, group_size: int) -> int:
    """Columns after padding to whole groups (zeros fill the last group)."""
    return -(-columns // group_size) * group_size


def check_group_size(group_size: int) -> None:
    if group_size < 2 or group_size % 2:
        raise ValueError(f"int4 group_size={group_size}: give an even number >= 2 (two values share a byte), "
                         "e.g. 32 or 64")


def int4_groupwise(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed 4-bit values (uint8, shape (rows, padded_columns / 2)) and float16 scales (rows, groups).

    Each group's scale is the candidate (``CLIP_RATIOS``) with the least squared error, rounded to float16
    before the values are rounded against it: a weight within the range (``|w| <= 7 * scale``) is within half a
    step of its value; a larger one is clipped to ``7 * scale``.
    """
    check_group_size(group_size)
    w = weight.detach().to(torch.float32)
    if w.dim() != 2:
        raise ValueError(f"int4 rows need a 2-D weight, got shape {tuple(w.shape)}")
    if not torch.isfinite(w).all():
        raise ValueError("the weight holds inf or nan: it cannot be stored as int4 rows")
    rows, columns = w.shape
    w = F.pad(w, (0, padded_columns(columns, group_size) - columns)).view(rows, -1, group_size)
    absmax = w.abs().amax(dim=2)
    if absmax.numel() and float(absmax.max()) / QMAX > _FP16.max:
        raise ValueError(f"a weight of magnitude {float(absmax.max()):.3g} overflows the float16 group scale")
    best_q = best_scale = best_error = None
    for ratio in CLIP_RATIOS:
        scale = (absmax * ratio / QMAX).clamp(min=_FP16.tiny).to(torch.float16)
        step = scale.to(torch.float32).unsqueeze(2)
        q = torch.round(w / step).clamp_(-QMAX, QMAX)
        error = (q * step - w).square().sum(dim=2)
        if best_q is None:
            best_q, best_scale, best_error = q, scale, error
        else:
            better = error < best_error
            best_q = torch.where(better.unsqueeze(2), q, best_q)
            best_scale, best_error = torch.where(better, scale, best_scale), torch.minimum(error, best_error)
    q, scale = best_q, best_scale
    nibbles = (q + OFFSET).to(torch.uint8).view(rows, -1)
    return nibbles[:, 0::2] | (nibbles[:, 1::2] << 4), scale


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The signed 4-bit values of packed rows, as int8 of shape (rows, 2 * packed columns)."""
    low = (packed & 0x0F).to(torch.int8) - OFFSET
    high = (packed >> 4).to(torch.int8) - OFFSET
    return torch.stack((low, high), dim=-1).flatten(-2)


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor, columns: int) -> torch.Tensor:
    """float32 weight of ``columns`` columns from packed rows and their group scales (any leading dims)."""
    values = unpack_int4(packed).to(torch.float32)
    group_size = values.shape[-1] // scale.shape[-1]
    weight = values.unflatten(-1, (scale.shape[-1], group_size)) * scale.to(torch.float32).unsqueeze(-1)
    return weight.flatten(-2)[..., :columns]


class Int4Embedding(nn.Module):
    """Token embedding stored as 4-bit groups with a float16 scale per group."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None, *,
                 group_size: int = 32, device=None, dtype=None):
        super().__init__()
        check_group_size(group_size)
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.group_size = group_size
        self.output_dtype = dtype or torch.float32
        padded = padded_columns(embedding_dim, group_size)
        self.weight = frozen(torch.zeros(num_embeddings, padded // 2, dtype=torch.uint8, device=device))
        self.register_buffer("weight_scale", torch.ones(num_embeddings, padded // group_size, dtype=torch.float16,
                                                        device=device))

    @classmethod
    @torch.no_grad()
    def from_embedding(cls, embedding: nn.Embedding, group_size: int) -> "Int4Embedding":
        layer = cls(embedding.num_embeddings, embedding.embedding_dim, embedding.padding_idx, group_size=group_size,
                    device=embedding.weight.device, dtype=embedding.weight.dtype)
        values, layer.weight_scale = int4_groupwise(embedding.weight, group_size)
        layer.weight = frozen(values)
        return layer

    def dequantized(self) -> torch.Tensor:
        return dequantize_int4(self.weight, self.weight_scale, self.embedding_dim)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = dequantize_int4(F.embedding(input_ids, self.weight), F.embedding(input_ids, self.weight_scale),
                               self.embedding_dim)
        return rows.to(self.output_dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int4 groups of {self.group_size}"


class Int4Linear(nn.Module):
    """Linear layer (an output head) whose weight is stored as 4-bit groups with a float16 scale per group."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, *, group_size: int = 32,
                 device=None, dtype=None):
        super().__init__()
        check_group_size(group_size)
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        padded = padded_columns(in_features, group_size)
        self.weight = frozen(torch.zeros(out_features, padded // 2, dtype=torch.uint8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, padded // group_size, dtype=torch.float16,
                                                        device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, group_size: int, tied: Int4Embedding | None = None) -> "Int4Linear":
        """``tied``: the int4 embedding whose matrix this head shares (one stored copy, as in the float model)."""
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, group_size=group_size,
                    device=linear.weight.device, dtype=linear.weight.dtype)
        if tied is not None:
            # The packed matrix is shared; the scales are a copy, because transformers ties "weight" only.
            layer.weight, layer.weight_scale = tied.weight, tied.weight_scale.clone()
        else:
            values, layer.weight_scale = int4_groupwise(linear.weight, group_size)
            layer.weight = frozen(values)
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=linear.bias.requires_grad)
        return layer

    def dequantized(self) -> torch.Tensor:
        return dequantize_int4(self.weight, self.weight_scale, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"int4 groups of {self.group_size}")
