"""Size and speed of BitNet b1.58 ternary layers and models against float32 (and float16 on disk), on CPU.

- ``linear``: one ternary layer (packed weight, 8-bit per-token activations) against ``nn.Linear`` float32 of
  the same shape, for several K = N, the tiny preset's (K, N) shapes and batch sizes; fastest of ``--repeats``.
  ``ternary_ms`` is the kernel Phase 4 ships (``auto``: int_mm for small layers, fbgemm above); the fbgemm and
  int_mm columns force one kernel.
- ``models``: whole forward pass and bytes on disk (model.safetensors) of Llama-shaped models and the
  Cognate models, float32 / float16 / ternary (every linear but the head ternarised, random weights) /
  ternary + int8 rows / ternary + int4 groups of 32 (the embedding, the head and the rest left in float, as
  Phase 4 stores them; int4 is its default).
- ``quality`` (with ``--model DIR``): ``forge.quant.run.quantize_model_dir`` on a real model directory,
  accuracy and perplexity before and after, and the spec criteria.

    python benchmarks/scripts/quant_bench.py --threads 1 --json benchmarks/results/quant_bench.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
from transformers import LlamaConfig, LlamaForCausalLM

import forge.quant  # noqa: F401  (registers the ternary quantizer)
from forge.artifacts import atomic_write_json
from forge.quant.bitlinear import BitLinear, TernaryLinear
from forge.quant.convert import (int8_candidates, pack_model, quantizable_linears, to_bitlinear,
                                 to_int4, to_int8)
from forge.quant.measure import forward_latency, linear_latency, ternary_layer_bytes, weight_file_bytes

LLAMA_SHAPES = {  # name: (hidden, intermediate, layers, heads)
    "llama-h256-l4": (256, 688, 4, 4),
    "llama-h512-l8": (512, 1376, 8, 8),
    "llama-h1024-l8": (1024, 2752, 8, 16),
}
COGNATE_MODELS = ("cognate-tiny-preset", "cognate-default")  # pipeline tiny preset; CognateConfig defaults
TINY_PRESET_SHAPES = ((128, 128), (128, 352), (352, 128))  # (K, N) of the tiny preset's attention and MLP layers


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="256,512,1024,2048,4096", help="K = N of the single-layer timings")
    parser.add_argument("--batches", default="1,8,32,128", help="rows of the single-layer timings")
    parser.add_argument("--shapes", default=",".join(f"{k}x{n}" for k, n in TINY_PRESET_SHAPES),
                        help="extra (K)x(N) shapes of the single-layer timings (default: the tiny preset's)")
    parser.add_argument("--models", default=",".join(list(LLAMA_SHAPES) + list(COGNATE_MODELS)),
                        help="whole models to time and size (names from LLAMA_SHAPES or COGNATE_MODELS)")
    parser.add_argument("--vocab", type=int, default=4096, help="vocabulary of the Llama-shaped models")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per sequence in forward timings")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per measurement (fastest counts)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    parser.add_argument("--model", type=Path, default=None, help="model directory for the quality section")
    parser.add_argument("--json", type=Path, default=None, help="write the results here (atomically)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.seq_len < 1:
        parser.error("--repeats and --seq-len must be >= 1")
    return args


def bench_linear(shapes: list[tuple[int, int]], batch_sizes: list[int], repeats: int) -> list[dict]:
    rows = []
    for k, n in shapes:
        torch.manual_seed(k * n)
        linear = nn.Linear(k, n, bias=False)
        bit = BitLinear.from_linear(linear)
        ternary = TernaryLinear.from_bitlinear(bit)
        for batch in batch_sizes:
            x = torch.randn(batch, k)
            with torch.no_grad():
                error = float((ternary(x) - bit(x)).abs().max() / bit(x).abs().max())
                shipped = ternary.auto_kernel(x)
            float_s = linear_latency(linear, x, repeats)
            kernel_s = {}
            for kernel in ("fbgemm", "int_mm"):
                ternary.kernel = kernel
                kernel_s[kernel] = linear_latency(ternary, x, repeats)
            ternary.kernel = "auto"
            ternary_s = kernel_s[shipped]
            rows.append({"k": k, "n": n, "batch": batch, "kernel": shipped, "float32_ms": 1e3 * float_s,
                         "ternary_ms": 1e3 * ternary_s, "speedup": float_s / ternary_s,
                         "fbgemm_ms": 1e3 * kernel_s["fbgemm"], "int_mm_ms": 1e3 * kernel_s["int_mm"],
                         "speedup_fbgemm": float_s / kernel_s["fbgemm"], "speedup_int_mm": float_s / kernel_s["int_mm"],
                         "max_rel_error_vs_bitlinear": error})
            print(f"linear K {k} N {n} batch {batch}: float32 {1e3 * float_s:.3f} ms, ternary ({shipped}) "
                  f"{1e3 * ternary_s:.3f} ms, x{float_s / ternary_s:.2f}; fbgemm x{float_s / kernel_s['fbgemm']:.2f}, "
                  f"int_mm x{float_s / kernel_s['int_mm']:.2f}", flush=True)
    return rows


def build_model(name: str, vocab: int) -> nn.Module:
    torch.manual_seed(0)
    if name in COGNATE_MODELS:
        from forge.config import CognatePhaseConfig
        from forge.models import CognateConfig, CognateForCausalLM

        if name == "cognate-default":
            return CognateForCausalLM(CognateConfig()).eval()
        if name == "cognate-tiny-preset":  # the pipeline's tiny preset: its architecture, 4096-token BPE
            phase = CognatePhaseConfig()
            config = CognateConfig(**phase.architecture, vocab_size=phase.data.bpe_vocab_size,
                                   ltm_slots=phase.models[0].ltm_slots, pad_token_id=0, bos_token_id=0,
                                   eos_token_id=0)
            return CognateForCausalLM(config).eval()
    if name not in LLAMA_SHAPES:
        raise SystemExit(f"unknown model {name!r}; choose from {', '.join(list(LLAMA_SHAPES) + list(COGNATE_MODELS))}")
    hidden, inter, layers, heads = LLAMA_SHAPES[name]
    return LlamaForCausalLM(LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                                        num_attention_heads=heads, num_key_value_heads=heads,
                                        vocab_size=vocab)).eval()


def set_kernel(model: nn.Module, kernel: str) -> None:
    for module in model.modules():
        if isinstance(module, TernaryLinear):
            module.kernel = kernel


def ternary_model(name: str, vocab: int, rows: str | None) -> nn.Module:
    """``name`` with every linear but the head ternarised and packed; ``rows``: the rest as int8 or int4 (groups
    of 32), None: left float."""
    model = build_model(name, vocab)
    to_bitlinear(model, quantizable_linears(model, min_out_features=8))
    if rows == "int8":
        to_int8(model, int8_candidates(model, min_out_features=8))
    elif rows == "int4":
        to_int4(model, int8_candidates(model, min_out_features=8), 32)
    pack_model(model)
    return model


def bench_model(name: str, vocab: int, seq_len: int, repeats: int, workdir: Path) -> dict:
    model = build_model(name, vocab)
    ids = torch.randint(0, model.config.vocab_size, (1, seq_len), generator=torch.Generator().manual_seed(0))
    float_s = forward_latency(model, ids, repeats)
    model.save_pretrained(workdir / f"{name}-f32")
    model.half().save_pretrained(workdir / f"{name}-f16")
    model = ternary_model(name, vocab, None)
    ternary_s = forward_latency(model, ids, repeats)
    model.save_pretrained(workdir / f"{name}-ternary")
    layers = ternary_layer_bytes(model)
    forward_s, kernel_s = {}, {}
    for kind in ("int8", "int4"):
        model = ternary_model(name, vocab, kind)
        forward_s[kind] = forward_latency(model, ids, repeats)
        model.save_pretrained(workdir / f"{name}-{kind}")
    for kernel in ("fbgemm", "int_mm"):  # Phase 4's default output (int4) with one kernel forced
        set_kernel(model, kernel)
        kernel_s[kernel] = forward_latency(model, ids, repeats)
    sizes = {kind: weight_file_bytes(workdir / f"{name}-{kind}") for kind in ("f32", "f16", "ternary", "int8", "int4")}
    row = {
        "model": name, "params": sum(p.numel() for p in build_model(name, vocab).parameters()),
        "ternary_weights": layers["ternary_weights"], "input_shape": list(ids.shape),
        "forward_float32_ms": 1e3 * float_s, "forward_ternary_ms": 1e3 * ternary_s, "speedup": float_s / ternary_s,
        "file_bytes_float32": sizes["f32"], "file_bytes_float16": sizes["f16"], "file_bytes_ternary": sizes["ternary"],
        "compression_vs_float32": sizes["f32"] / sizes["ternary"],
        "compression_vs_float16": sizes["f16"] / sizes["ternary"],
        "file_bytes_ternary_int8": sizes["int8"],
        "compression_ternary_int8_vs_float32": sizes["f32"] / sizes["int8"],
        "compression_ternary_int8_vs_float16": sizes["f16"] / sizes["int8"],
        "forward_ternary_int8_ms": 1e3 * forward_s["int8"], "speedup_ternary_int8": float_s / forward_s["int8"],
        "file_bytes_ternary_int4": sizes["int4"],
        "compression_ternary_int4_vs_float32": sizes["f32"] / sizes["int4"],
        "compression_ternary_int4_vs_float16": sizes["f16"] / sizes["int4"],
        "forward_ternary_int4_ms": 1e3 * forward_s["int4"], "speedup_ternary_int4": float_s / forward_s["int4"],
        "forward_ternary_int4_fbgemm_ms": 1e3 * kernel_s["fbgemm"],
        "forward_ternary_int4_int_mm_ms": 1e3 * kernel_s["int_mm"],
        "ternary_layers_bytes": layers["packed_bytes"],
        "ternary_layers_compression_vs_float32": layers["float32_bytes"] / layers["packed_bytes"],
        "ternary_layers_compression_vs_float16": layers["float16_bytes"] / layers["packed_bytes"],
    }
    print(f"{name}: forward float32 {row['forward_float32_ms']:.1f} ms, ternary {row['forward_ternary_ms']:.1f} ms "
          f"(x{row['speedup']:.2f}); disk {sizes['f32']} / {sizes['f16']} / {sizes['ternary']} bytes "
          f"(x{row['compression_vs_float32']:.2f} vs float32, ternary layers "
          f"x{row['ternary_layers_compression_vs_float32']:.1f}); + int8 rows {sizes['int8']} bytes "
          f"(x{row['compression_ternary_int8_vs_float32']:.2f}), forward {row['forward_ternary_int8_ms']:.1f} ms; "
          f"+ int4 groups {sizes['int4']} bytes (x{row['compression_ternary_int4_vs_float32']:.2f}), forward "
          f"{row['forward_ternary_int4_ms']:.1f} ms (x{row['speedup_ternary_int4']:.2f}; fbgemm only "
          f"{row['forward_ternary_int4_fbgemm_ms']:.1f} ms, int_mm only {row['forward_ternary_int4_int_mm_ms']:.1f} ms)",
          flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "machine": platform.machine(), "quantized_engine": torch.backends.quantized.engine,
        "load_average_start": os.getloadavg(),
        "linear": bench_linear([(int(s), int(s)) for s in args.sizes.split(",") if s]
                               + [tuple(int(d) for d in shape.split("x")) for shape in args.shapes.split(",") if shape],
                               [int(b) for b in args.batches.split(",") if b], args.repeats),
    }
    with tempfile.TemporaryDirectory() as tmp:
        results["models"] = [bench_model(name, args.vocab, args.seq_len, max(3, args.repeats // 4), Path(tmp))
                             for name in args.models.split(",") if name]
    if args.model is not None:
        from forge.quant.run import QuantizeJobConfig, quantize_model_dir

        with tempfile.TemporaryDirectory() as tmp:
            results["quality"] = quantize_model_dir(args.model, Path(tmp) / "ternary", QuantizeJobConfig())
    results["load_average_end"] = os.getloadavg()
    text = json.dumps(results, indent=2)
    if args.json:
        atomic_write_json(args.json, results)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
