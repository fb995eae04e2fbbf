"""Training throughput and MFU of the Cognate model against a GPT-2 of the same width and depth, on CPU.

Both models train with AdamW on the same random token batches for ``--steps`` timed steps (after
``--warmup`` untimed ones). MFU = (estimated training FLOPs per token x tokens/s) / measured float32 matmul
rate (a 2048x2048 @ 2048x2048 matmul, best of several). Cognate FLOPs come from
``forge.models.estimate_flops_per_token`` with the supervision steps it actually computed; GPT-2 FLOPs use
the same convention: 6 x (matmul weights incl. lm_head) + 12 x layers x d x mean attended keys.

    python benchmarks/scripts/cognate_throughput.py --json benchmarks/results/cognate_throughput.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from forge.artifacts import atomic_write_json
from forge.models import CognateConfig, CognateForCausalLM, estimate_flops_per_token, get_model_size
from forge.models.size import gpt2_flops_per_token

MATMUL_SIZE = 2048


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=128, help="width of both models")
    parser.add_argument("--layers", type=int, default=4, help="depth of both models")
    parser.add_argument("--heads", type=int, default=4, help="attention heads of both models")
    parser.add_argument("--vocab", type=int, default=50257, help="vocabulary size (GPT-2 BPE)")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--batch", type=int, default=4, help="sequences per step")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per model")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    parser.add_argument("--window", type=int, default=128, help="Cognate sliding window")
    parser.add_argument("--ltm-slots", type=int, default=256, help="Cognate memory MLP width")
    parser.add_argument("--memory-dim", type=int, default=32, help="Cognate memory key/value width")
    parser.add_argument("--memory-chunk", type=int, default=64, help="Cognate memory chunk size")
    parser.add_argument("--act-max-steps", type=int, default=2, help="Cognate ACT supervision steps")
    parser.add_argument("--trm-refinements", type=int, default=2, help="Cognate refinements per step (T)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and token batches")
    parser.add_argument("--compile-layers", action="store_true",
                        help="CognateConfig.compile_layers (torch.compile each Cognate decoder layer)")
    parser.add_argument("--profile-ops", type=int, default=0,
                        help="after timing, profile one more Cognate step (torch.profiler) and report its N ops with "
                             "the most self CPU time")
    parser.add_argument("--json", type=Path, default=None, help="write the results here (atomically)")
    args = parser.parse_args(argv)
    for name in ("hidden", "layers", "heads", "vocab", "seq_len", "batch", "steps", "window"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.hidden % args.heads:
        parser.error("--hidden must be divisible by --heads")
    return args


def matmul_flops_per_s(repeats: int = 5) -> float:
    """Best float32 rate of a 2048^2 x 2048^2 matmul (2*n^3 FLOPs) over ``repeats`` tries."""
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * MATMUL_SIZE**3 / best


def cognate_config(args: argparse.Namespace) -> CognateConfig:
    """Cognate with GPT-2's width and depth; the SwiGLU width is chosen to match GPT-2's parameter count."""
    d = args.hidden
    memory_params = 4 * d * args.memory_dim + 3 * d + 3  # projections and gates (fast weights are not parameters)
    gpt2_layer = 12 * d * d + 13 * d  # attention + 4d MLP weights and biases, two LayerNorms
    intermediate = max(8, round((gpt2_layer - 4 * d * d - memory_params - 2 * d) / (3 * d)))
    return CognateConfig(vocab_size=args.vocab, hidden_size=d, intermediate_size=intermediate,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         sliding_window=args.window, max_position_embeddings=args.seq_len,
                         ltm_slots=args.ltm_slots, memory_dim=args.memory_dim, memory_chunk_size=args.memory_chunk,
                         act_max_steps=args.act_max_steps, trm_refinements=args.trm_refinements,
                         compile_layers=args.compile_layers)


def train(model: torch.nn.Module, batches: list[torch.Tensor], warmup: int, profile_ops: int = 0) -> dict:
    """AdamW steps over ``batches``; the first ``warmup`` are not timed. ``profile_ops``: profile one more step on
    the last batch and return its top ops by self CPU time."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    times, cpu_times, losses, computed_steps, halting_steps = [], [], [], [], []

    def step(batch):
        out = model(batch, labels=batch)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        return out

    for index, batch in enumerate(batches):
        start, cpu_start = time.perf_counter(), time.process_time()
        out = step(batch)
        elapsed, cpu_elapsed = time.perf_counter() - start, time.process_time() - cpu_start
        losses.append(out.loss.item())
        if index >= warmup:
            times.append(elapsed)
            cpu_times.append(cpu_elapsed)
            if hasattr(out, "computed_steps"):
                computed_steps.append(out.computed_steps)
                halting_steps.append(out.halting_steps)
    tokens = sum(b.numel() for b in batches[warmup:])
    # process CPU time: on a shared machine wall time includes waiting for a core, CPU time does not
    result = {"tokens_per_s": tokens / sum(times), "step_s": times, "step_cpu_s": cpu_times,
              "tokens_per_cpu_s": tokens / sum(cpu_times), "loss_first": losses[0], "loss_last": losses[-1]}
    if profile_ops:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step(batches[-1])
        ops = sorted(prof.key_averages(), key=lambda op: op.self_cpu_time_total, reverse=True)
        total = sum(op.self_cpu_time_total for op in ops)
        result["profile"] = {"self_cpu_s": total / 1e6, "top_ops": [
            {"op": op.key, "self_cpu_s": op.self_cpu_time_total / 1e6, "share": op.self_cpu_time_total / total,
             "calls": op.count} for op in ops[:profile_ops]]}
    if computed_steps:
        result["computed_steps_mean"] = sum(computed_steps) / len(computed_steps)
        result["halting_steps_mean"] = sum(halting_steps) / len(halting_steps)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    peak = matmul_flops_per_s()
    generator = torch.Generator().manual_seed(args.seed)
    batches = [torch.randint(0, args.vocab, (args.batch, args.seq_len), generator=generator)
               for _ in range(args.warmup + args.steps)]

    gpt2_config = GPT2Config(vocab_size=args.vocab, n_embd=args.hidden, n_layer=args.layers, n_head=args.heads,
                             n_positions=args.seq_len, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    gpt2 = GPT2LMHeadModel(gpt2_config)
    gpt2_run = train(gpt2, batches, args.warmup)
    gpt2_run.update(params=get_model_size(gpt2)["params"], flops_per_token=gpt2_flops_per_token(gpt2_config, args.seq_len))
    del gpt2

    config = cognate_config(args)
    cognate = CognateForCausalLM(config)
    cognate_run = train(cognate, batches, args.warmup, args.profile_ops)
    cognate_run.update(params=get_model_size(cognate)["params"],
                       flops_per_token=estimate_flops_per_token(config, args.seq_len,
                                                                steps=cognate_run["computed_steps_mean"]))
    for run in (gpt2_run, cognate_run):
        run["flops_per_s"] = run["flops_per_token"] * run["tokens_per_s"]
        run["mfu"] = run["flops_per_s"] / peak
        run["mfu_cpu_time"] = run["flops_per_token"] * run["tokens_per_cpu_s"] / peak
    payload = {
        "command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "matmul_fp32_flops_per_s": peak,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "cognate_config": {k: getattr(config, k) for k in (
            "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "sliding_window",
            "ltm_slots", "memory_dim", "memory_chunk_size", "trm_latent_updates", "trm_refinements",
            "act_max_steps", "act_threshold", "deep_supervision_weight")},
        "gpt2": gpt2_run,
        "cognate": cognate_run,
        "mfu_ratio_cognate_over_gpt2": cognate_run["mfu"] / gpt2_run["mfu"],
        "mfu_cpu_time_ratio_cognate_over_gpt2": cognate_run["mfu_cpu_time"] / gpt2_run["mfu_cpu_time"],
        "goal_mfu_ratio": 0.8,
    }
    if args.json:
        atomic_write_json(args.json, payload)
    summary = {name: {k: payload[name][k] for k in ("params", "tokens_per_s", "flops_per_token", "mfu",
                                                    "mfu_cpu_time")}
               for name in ("gpt2", "cognate")}
    print(json.dumps({"matmul_fp32_flops_per_s": peak, **summary,
                      "mfu_ratio_cognate_over_gpt2": payload["mfu_ratio_cognate_over_gpt2"],
                      "mfu_cpu_time_ratio_cognate_over_gpt2": payload["mfu_cpu_time_ratio_cognate_over_gpt2"]},
                     indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
