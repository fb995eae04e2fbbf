"""Ternary weight packing: five trits per byte (base 3), 1.6 bits per weight.

A weight in {-1, 0, 1} is stored as the digit ``w + 1`` in {0, 1, 2}; five digits make one byte
``d0 + 3 d1 + 9 d2 + 27 d3 + 81 d4`` (at most 242). Unpacking is one table lookup per byte.
"""
from __future__ import annotations

import math

import torch

TRITS_PER_BYTE = 5
_POWERS = torch.tensor([1, 3, 9, 27, 81], dtype=torch.int16)
# Row b of the table holds the five ternary values encoded by byte b (rows 243..255 are never written).
_UNPACK_TABLE = torch.stack(
    [(torch.arange(256, dtype=torch.int16) // p) % 3 - 1 for p in _POWERS.tolist()], dim=1
).to(torch.int8)


def packed_size(numel: int) -> int:
    """Bytes needed to pack ``numel`` ternary values."""
    return math.ceil(numel / TRITS_PER_BYTE)


def pack_ternary(values: torch.Tensor) -> torch.Tensor:
    """Pack a tensor of -1/0/1 (any shape, any integer or float dtype) into a flat uint8 tensor."""
    flat = values.detach().reshape(-1)
    as_float = flat.to(torch.float32)
    if ((as_float.abs() > 1) | (as_float != as_float.round())).any():
        raise ValueError("pack_ternary takes only the values -1, 0 and 1; ternarise the weight first "
                         "(forge.quant.bitlinear.absmean_ternarize)")
    digits = (flat.to(torch.int16) + 1).cpu()
    pad = (-digits.numel()) % TRITS_PER_BYTE
    if pad:
        digits = torch.cat([digits, torch.ones(pad, dtype=torch.int16)])  # padding encodes zeros
    packed = (digits.view(-1, TRITS_PER_BYTE) * _POWERS).sum(dim=1)
    return packed.to(torch.uint8).to(values.device)


def unpack_ternary(packed: torch.Tensor, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """Inverse of :func:`pack_ternary`: an int8 tensor of ``shape`` holding -1/0/1."""
    numel = math.prod(shape)
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != packed_size(numel):
        raise ValueError(f"packed ternary weight for shape {tuple(shape)} must be a flat uint8 tensor of "
                         f"{packed_size(numel)} bytes, got {packed.dtype} {tuple(packed.shape)}: the file "
                         "does not match the model config")
    table = _UNPACK_TABLE.to(packed.device)
    return table[packed.long()].reshape(-1)[:numel].reshape(shape)
