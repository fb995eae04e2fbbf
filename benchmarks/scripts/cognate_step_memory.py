"""Peak memory and time of one Cognate training step (forward + backward) against a GPT-2 of the same size, on CPU.

The Cognate architecture is read from a preset (``forge/presets/gtx1660.yaml`` by default: hidden 320, 8 layers,
GPT-2 vocabulary) with one of its models' memory size; the GPT-2 has the same width, depth, heads and
vocabulary. Each model runs in a fresh subprocess (so one model's freed memory cannot hide the other's peak):
it builds the model and one random batch, resets the kernel's peak-RSS counter (``/proc/self/clear_refs``),
runs forward + backward and reads the peak (VmHWM). "extra" is that peak minus the resident memory just
before the step: what the step itself needs (activations, gradients, logits). glibc's mmap threshold is
pinned there so freed large tensors go back to the kernel instead of staying in the heap. Time is measured in
another fresh subprocess with the default allocator (the pinned threshold makes every large allocation fault
its pages in): ``--warmup`` untimed steps, then the median of ``--steps``.

    python benchmarks/scripts/cognate_step_memory.py --json OUT [--activation-checkpointing layer]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from forge.artifacts import atomic_write_json

MALLOC_MMAP_THRESHOLD = 128 * 1024  # bytes; above it glibc maps (and unmaps) each allocation on its own


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="gtx1660", help="preset whose cognate.architecture is measured")
    parser.add_argument("--model", default="reasoning", help="which of the preset's models (its ltm_slots)")
    parser.add_argument("--vocab", type=int, default=50257, help="vocabulary of both models (GPT-2 BPE)")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per sequence")
    parser.add_argument("--batch", type=int, default=1, help="sequences per step")
    parser.add_argument("--steps", type=int, default=1, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before the timed ones")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--activation-checkpointing", default=None,
                        help="CognateConfig.activation_checkpointing for Cognate (default: the config's default)")
    parser.add_argument("--arch-json", default=None,
                        help="CognateConfig fields as JSON, instead of --preset/--model (e.g. small sizes for tests)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here (atomically)")
    parser.add_argument("--worker", choices=("cognate", "gpt2"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--measure", choices=("memory", "time"), default="memory", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("vocab", "seq_len", "batch", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    return args


def cognate_config(args: argparse.Namespace):
    from forge.config import load_pipeline_config
    from forge.models import CognateConfig

    if args.arch_json:
        return CognateConfig(**dict(json.loads(args.arch_json), vocab_size=args.vocab))
    phase = load_pipeline_config(args.preset).cognate
    specs = {spec.name: spec for spec in phase.models}
    if args.model not in specs:
        raise SystemExit(f"--model {args.model!r}: the preset {args.preset!r} has {sorted(specs)}")
    spec = specs[args.model]
    fields = dict(phase.architecture, vocab_size=args.vocab, ltm_slots=spec.ltm_slots,
                  act_threshold=spec.act_threshold)
    if args.activation_checkpointing is not None:
        fields["activation_checkpointing"] = args.activation_checkpointing
    return CognateConfig(**fields)


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def worker(args: argparse.Namespace) -> dict:
    """Runs in the subprocess: build one model, measure its first step's memory, time the next steps."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from forge.models import CognateForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = cognate_config(args)
    if args.worker == "cognate":
        model = CognateForCausalLM(config)
    else:
        model = GPT2LMHeadModel(GPT2Config(
            vocab_size=args.vocab, n_embd=config.hidden_size, n_layer=config.num_hidden_layers,
            n_head=config.num_attention_heads, n_positions=args.seq_len,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    model.train()
    batch = torch.randint(0, args.vocab, (args.batch, args.seq_len), generator=torch.Generator().manual_seed(0))
    # As the trainer calls it: Cognate returns no logits, so its CE is blocked under activation checkpointing.
    loss_only = {"return_logits": False} if args.worker == "cognate" else {}

    def step() -> float:
        start = time.perf_counter()
        out = model(input_ids=batch, labels=batch, **loss_only)
        out.loss.backward()
        elapsed = time.perf_counter() - start
        model.zero_grad(set_to_none=True)
        return elapsed

    if args.measure == "time":
        for _ in range(args.warmup):
            step()
        times = [step() for _ in range(args.steps)]
        return {"step_s": statistics.median(times), "tokens_per_s": args.batch * args.seq_len / statistics.median(times)}
    gc.collect()
    before_kib = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    first_s = step()
    peak_kib = _status_kib("VmHWM")
    return {"params": sum(p.numel() for p in model.parameters()), "rss_before_step_gib": before_kib / 2**20,
            "peak_rss_gib": peak_kib / 2**20, "extra_gib": (peak_kib - before_kib) / 2**20,
            "first_step_s_pinned_malloc": first_s}


def run_worker(name: str, measure: str, argv: list[str]) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if measure == "memory":
        env["MALLOC_MMAP_THRESHOLD_"] = str(MALLOC_MMAP_THRESHOLD)
    done = subprocess.run([sys.executable, __file__, *argv, "--worker", name, "--measure", measure], env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{name} {measure} worker failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def without_json(argv: list[str]) -> list[str]:
    """``argv`` less its ``--json PATH`` / ``--json=PATH`` (the workers print their result instead)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--json":
            skip = True
        elif not arg.startswith("--json="):
            kept.append(arg)
    return kept


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    from forge.models.size import estimate_step_memory_bytes

    config = cognate_config(args)  # bad --preset/--model/--activation-checkpointing fail here, before any run
    forwarded = without_json(argv)
    gpt2, cognate = ({**run_worker(name, "memory", forwarded), **run_worker(name, "time", forwarded)}
                     for name in ("gpt2", "cognate"))
    import torch

    payload = {
        "command": " ".join([Path(__file__).name, *argv]),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__},
        "batch": args.batch, "seq_len": args.seq_len,
        "cognate_config": {k: getattr(config, k) for k in (
            "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
            "sliding_window", "ltm_slots", "memory_dim", "memory_chunk_size", "trm_latent_updates",
            "trm_refinements", "act_max_steps", "act_threshold")},
        "activation_checkpointing": getattr(config, "activation_checkpointing", None),
        "gpt2": gpt2, "cognate": cognate,
        "cognate_estimate_gib": estimate_step_memory_bytes(config, args.batch, args.seq_len) / 2**30,
        "extra_memory_ratio_cognate_over_gpt2": cognate["extra_gib"] / gpt2["extra_gib"],
        "step_time_ratio_cognate_over_gpt2": cognate["step_s"] / gpt2["step_s"],
        "goal_extra_memory_ratio": 2.0,
    }
    if args.json:
        atomic_write_json(args.json, payload)
    print(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
