"""BitNet b1.58 linear layers.

``BitLinear`` trains: it keeps the float ("latent") weight and, in the forward pass, ternarises it by
absmean (``gamma = mean|W|``, ``W~ = RoundClip(W / gamma, -1, 1)``) and quantizes activations to 8
bits per token, both with a straight-through estimator. ``TernaryLinear`` serves: it holds only the
packed ternary weight (1.6 bits each) and one float scale, and runs the int8 kernel.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from forge.quant import kernels
from forge.quant.packing import pack_ternary, packed_size, unpack_ternary

Kernel = Literal["auto", "fbgemm", "int_mm", "reference"]


def absmean_ternarize(weight: torch.Tensor, zero_threshold: float = 0.5,
                      eps: float = kernels.EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Ternary values (int8, -1/0/1) and the absmean scale ``gamma`` of ``weight``.

    A weight becomes 0 when ``|w| / gamma <= zero_threshold``; 0.5 is BitNet's RoundClip (round half to
    even sends exactly 0.5 to 0). A larger threshold gives more zeros.
    """
    w = weight.detach().to(torch.float32)
    gamma = w.abs().mean().clamp(min=eps)
    ternary = torch.sign(w) * ((w.abs() / gamma) > zero_threshold)
    return ternary.to(torch.int8), gamma


class BitLinear(nn.Linear):
    """Drop-in ``nn.Linear`` that computes with ternary weights and 8-bit activations (STE for training)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 zero_threshold: float = 0.5, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.zero_threshold = zero_threshold
        # Calibrated multiplier on gamma (least-squares fit of the layer's outputs); 1.0 is plain BitNet.
        self.register_buffer("scale_correction", torch.ones((), device=device))

    @classmethod
    def from_linear(cls, linear: nn.Linear, zero_threshold: float = 0.5) -> "BitLinear":
        """Wrap ``linear``'s own parameters (shared, not copied) in a BitLinear."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.in_features, layer.out_features = linear.in_features, linear.out_features
        layer.weight, layer.bias = linear.weight, linear.bias
        layer.zero_threshold = zero_threshold
        layer.register_buffer("scale_correction", torch.ones((), device=linear.weight.device))
        return layer

    def ternary(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The ternary weight (int8) and its scale, as they will be stored."""
        ternary, gamma = absmean_ternarize(self.weight, self.zero_threshold)
        return ternary, gamma * self.scale_correction

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ternary, scale = self.ternary()
        w_q = self.weight + (ternary.to(self.weight.dtype) * scale.to(self.weight.dtype) - self.weight).detach()
        return F.linear(kernels.fake_quantize_activations(x), w_q, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, zero_threshold={self.zero_threshold}"


class TernaryLinear(nn.Module):
    """Inference layer holding a packed ternary weight (uint8, 5 per byte) and its float scale (frozen)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, *,
                 kernel: Kernel = "auto", device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.kernel = kernel
        self.register_buffer("weight_packed", torch.zeros(packed_size(in_features * out_features),
                                                          dtype=torch.uint8, device=device))
        # A frozen parameter rather than a buffer: adapter libraries (peft) find a layer's device from it.
        self.weight_scale = nn.Parameter(torch.ones(1, dtype=torch.float32, device=device), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None
        self._cache: dict[str, tuple] = {}  # kernel name -> (packed buffer identity, weight form)

    @classmethod
    def from_ternary(cls, ternary: torch.Tensor, scale: torch.Tensor,
                     bias: torch.Tensor | None = None) -> "TernaryLinear":
        out_features, in_features = ternary.shape
        layer = cls(in_features, out_features, bias=bias is not None, device=ternary.device)
        layer.weight_packed.copy_(pack_ternary(ternary))
        layer.weight_scale.fill_(float(scale))
        if bias is not None:
            layer.bias = nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
        return layer

    @classmethod
    def from_bitlinear(cls, layer: BitLinear) -> "TernaryLinear":
        ternary, scale = layer.ternary()
        return cls.from_ternary(ternary, scale, layer.bias)

    def ternary_weight(self) -> torch.Tensor:
        """The -1/0/1 weight as int8, shape (out_features, in_features)."""
        return unpack_ternary(self.weight_packed, (self.out_features, self.in_features))

    def _cached(self, kind: str):
        """Per-kernel weight form, rebuilt only when the packed buffer changes (load, to(), copy_)."""
        key = (self.weight_packed.data_ptr(), self.weight_packed._version,
               self.weight_scale.data_ptr(), self.weight_scale._version)
        cached = self._cache.get(kind)
        if cached is None or cached[0] != key:
            ternary = self.ternary_weight()
            value = (kernels.prepack_fbgemm(ternary, float(self.weight_scale)) if kind == "fbgemm"
                     else ternary.t().contiguous() if kind == "int_mm" else ternary.to(torch.float32))
            cached = self._cache[kind] = (key, value)
        return cached[1]

    def auto_kernel(self, x: torch.Tensor) -> str:
        """The integer kernels on CPU without gradient (int_mm for small layers, fbgemm above); else reference."""
        if x.device.type != "cpu" or (torch.is_grad_enabled() and x.requires_grad):
            return "reference"
        if kernels.int_mm_available() and self.in_features * self.out_features <= kernels.INT_MM_MAX_WEIGHTS:
            return "int_mm"
        return "fbgemm" if kernels.fbgemm_available() else "reference"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self.kernel
        if kernel == "auto":
            kernel = self.auto_kernel(x)
        if kernel == "fbgemm":
            return kernels.fbgemm_ternary_linear(x, self._cached("fbgemm"), self.bias)
        if kernel == "int_mm":
            return kernels.int_mm_ternary_linear(x, self._cached("int_mm"), self.weight_scale, self.bias)
        return kernels.reference_ternary_linear(x, self._cached("reference"), self.weight_scale, self.bias)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = {}  # fbgemm's packed weight is a C++ object: rebuild it instead of copying
        return state

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, kernel={self.kernel}")
