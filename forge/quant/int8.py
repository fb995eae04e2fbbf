"""8-bit storage of the layers BitNet keeps in higher precision: the token embedding and the output head.

On a small model these dominate the bytes (a 50257 x 320 tied embedding is 64 MB in float32 against 2 MB
for all ternary layers), so the whole-model ratio stays near 1.6x while they are float32. Here each row
keeps ``int8`` values and one float32 scale (symmetric absmax per row: ``w ~ q * absmax / 127``): 4x
smaller than float32 with a relative error under 0.4% of the row's largest weight. Weight-only: the
activations stay float, and each forward dequantizes the matrix transiently (the head's matmul costs
``tokens`` times more than that). The int8 matrices are frozen parameters (integers take no gradient).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

QMAX = 127.0


def int8_rowwise(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric absmax quantization: int8 values and float32 scales of shape (rows, 1)."""
    w = weight.detach().to(torch.float32)
    scale = (w.abs().amax(dim=1, keepdim=True) / QMAX).clamp(min=torch.finfo(torch.float32).tiny)
    return torch.round(w / scale).clamp_(-QMAX, QMAX).to(torch.int8), scale


def frozen(values: torch.Tensor) -> nn.Parameter:
    # A parameter, not a buffer: transformers ties a head to its embedding by parameter ("lm_head.weight").
    return nn.Parameter(values, requires_grad=False)


class Int8Embedding(nn.Module):
    """Token embedding stored as int8 rows with a float32 scale per row."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None, *,
                 device=None, dtype=None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.output_dtype = dtype or torch.float32
        self.weight = frozen(torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(num_embeddings, 1, dtype=torch.float32, device=device))

    @classmethod
    @torch.no_grad()
    def from_embedding(cls, embedding: nn.Embedding) -> "Int8Embedding":
        layer = cls(embedding.num_embeddings, embedding.embedding_dim, embedding.padding_idx,
                    device=embedding.weight.device, dtype=embedding.weight.dtype)
        values, layer.weight_scale = int8_rowwise(embedding.weight)
        layer.weight = frozen(values)
        return layer

    def dequantized(self) -> torch.Tensor:
        return self.weight.to(torch.float32) * self.weight_scale

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(input_ids, self.weight).to(torch.float32)
        return (rows * F.embedding(input_ids, self.weight_scale)).to(self.output_dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 rows"


class Int8Linear(nn.Module):
    """Linear layer (an output head) whose weight is stored as int8 rows with a float32 scale per row."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, *, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = frozen(torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, 1, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, tied: Int8Embedding | None = None) -> "Int8Linear":
        """``tied``: the int8 embedding whose matrix this head shares (one stored copy, as in the float model)."""
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype)
        if tied is not None:
            # The int8 matrix is shared; the scales are a copy, because transformers ties "weight" only.
            layer.weight, layer.weight_scale = tied.weight, tied.weight_scale.clone()
        else:
            values, layer.weight_scale = int8_rowwise(linear.weight)
            layer.weight = frozen(values)
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=linear.bias.requires_grad)
        return layer

    def dequantized(self) -> torch.Tensor:
        return self.weight.to(torch.float32) * self.weight_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8 rows"
