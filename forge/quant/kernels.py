"""Matrix kernels for a ternary weight times 8-bit per-token activations.

Both kernels compute ``y[t] = (q[t] @ T^T) * scale_w * s[t] + bias`` where ``T`` holds -1/0/1,
``q[t] = clamp(round(x[t] / s[t]), -128, 127)`` and ``s[t] = absmax(x[t]) / 127`` (BitNet b1.58's
activation quantization). They differ in how the product is done:

- ``fbgemm``: torch's int8 CPU GEMM (u8 activations x s8 weights, int32 accumulation). The
  per-token integers go in with scale 1 and zero point 128, so fbgemm's per-tensor activation
  scheme represents them exactly; ternary weights cannot saturate its int16 pair sums. No gradient.
- ``int_mm``: ``torch._int_mm`` (s8 x s8, int32 accumulation) on the per-token integers and the ternary
  weight cached as int8. Less fixed cost per call than fbgemm (about 15 us less at K = 128 on one core)
  but a slower GEMM from K = 1024, so ``auto`` uses it for small layers only (``INT_MM_MAX_WEIGHTS``).
- ``reference``: float matmul on a cached float copy of ``T``, with a straight-through estimator for
  the activation rounding, so gradients reach the input (LoRA training on the frozen model).
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

ACTIVATION_QMAX = 127.0
EPS = 1e-5
# ``auto`` runs layers with at most this many weights through int_mm, larger ones through fbgemm: int_mm was
# faster up to 512 x 512 at every batch measured, fbgemm from 1024 x 1024 at batches up to 32
# (benchmarks/scripts/quant_bench.py, docs/BENCHMARKS.md).
INT_MM_MAX_WEIGHTS = 512 * 512


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token symmetric 8-bit absmax: integer-valued ``q`` (float dtype) and dequant scale ``s``.

    The token's absmax maps to 127, so ``|q| <= 127`` and BitNet's clip to [-128, 127] never acts.
    """
    absmax = torch.linalg.vector_norm(x, float("inf"), dim=-1, keepdim=True).clamp_(min=EPS)
    return torch.round(x * (ACTIVATION_QMAX / absmax)), absmax / ACTIVATION_QMAX


def fake_quantize_activations(x: torch.Tensor) -> torch.Tensor:
    """8-bit per-token quantize-dequantize with a straight-through gradient."""
    q, scale = quantize_activations(x)
    return x + (q * scale - x).detach()


def fbgemm_available() -> bool:
    return torch.backends.quantized.engine in ("x86", "fbgemm") and hasattr(
        torch.ops.quantized, "linear_with_input_q_dq_qweight_dq_output_fp32")


def int_mm_available() -> bool:
    return hasattr(torch, "_int_mm")


def int_mm_ternary_linear(x: torch.Tensor, ternary_t: torch.Tensor, scale: torch.Tensor,
                          bias: torch.Tensor | None) -> torch.Tensor:
    """Ternary linear through ``torch._int_mm``; ``ternary_t`` is the -1/0/1 weight transposed, int8 (K, N)."""
    q, s = quantize_activations(x.reshape(-1, x.shape[-1]).to(torch.float32))
    y = torch._int_mm(q.to(torch.int8), ternary_t).to(torch.float32).mul_(s * scale)
    if bias is not None:
        y.add_(bias.to(torch.float32))
    return y.to(x.dtype).reshape(*x.shape[:-1], y.shape[-1])


def prepack_fbgemm(ternary: torch.Tensor, scale: float):
    """fbgemm's packed int8 form of a ternary weight (1 byte per weight, built once per weight)."""
    with warnings.catch_warnings():
        # Quantized tensors are deprecated in favour of torchao but remain the only int8 CPU GEMM in torch.
        warnings.simplefilter("ignore", UserWarning)
        qweight = torch._make_per_tensor_quantized_tensor(ternary.to(torch.int8).cpu(), scale, 0)
        return torch.ops.quantized.linear_prepack(qweight, None)


def fbgemm_ternary_linear(x: torch.Tensor, packed_weight, bias: torch.Tensor | None) -> torch.Tensor:
    """Ternary linear through fbgemm; ``packed_weight`` from :func:`prepack_fbgemm`."""
    q, scale = quantize_activations(x.reshape(-1, x.shape[-1]).to(torch.float32))
    y = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(q, 1.0, 128, packed_weight).mul_(scale)
    if bias is not None:
        y.add_(bias.to(torch.float32))
    return y.to(x.dtype).reshape(*x.shape[:-1], y.shape[-1])


def reference_ternary_linear(x: torch.Tensor, ternary_float: torch.Tensor, scale: torch.Tensor,
                             bias: torch.Tensor | None) -> torch.Tensor:
    """Ternary linear as a float matmul on the -1/0/1 weight; differentiable in ``x``."""
    y = F.linear(fake_quantize_activations(x), ternary_float.to(x.dtype)) * scale.to(x.dtype)
    return y + bias.to(x.dtype) if bias is not None else y

