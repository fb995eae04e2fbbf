"""Generation speed of a tiny-preset Cognate model with and without its decoding cache.

The model has ``forge/presets/tiny.yaml``'s architecture (its first model's memory slots and halting threshold,
the preset's BPE vocabulary size) and random weights: speed does not depend on what it learned, except
through ACT halting, which is reported (``computed_steps``). Each run decodes greedily ``--new-tokens``
after random prompts of ``--prompt-tokens``, through our sampling loops' helper (``forge.decoding``)
and through ``transformers`` ``generate()``, with the cache and with ``use_cache`` off (every step
reruns the prefix). Both give the same tokens (checked). Best of ``--repeats`` runs.

    python benchmarks/scripts/cognate_generation.py --json benchmarks/results/cognate_generation.json
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

from forge.artifacts import atomic_write_json
from forge.config import load_pipeline_config
from forge.decoding import IncrementalDecoder, sample_next
from forge.models import CognateConfig, CognateForCausalLM, get_model_size


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompt-tokens", type=int, default=64, help="tokens per prompt")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens generated per prompt")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="prompts decoded together")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per setting (the best counts)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and prompts")
    parser.add_argument("--json", type=Path, default=None, help="write the results here (atomically)")
    args = parser.parse_args(argv)
    for name in ("prompt_tokens", "new_tokens", "repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if min(args.batch_sizes) < 1:
        parser.error("--batch-sizes must be >= 1")
    return args


def tiny_preset_config(max_positions: int) -> CognateConfig:
    """The tiny preset's Cognate architecture, first model, preset vocabulary; long enough for the run."""
    preset = load_pipeline_config("tiny")
    arch = dict(preset.cognate.architecture)
    spec = preset.cognate.models[0]
    arch.update(vocab_size=preset.cognate.data.bpe_vocab_size, ltm_slots=spec.ltm_slots,
                act_threshold=spec.act_threshold,
                max_position_embeddings=max(arch["max_position_embeddings"], max_positions),
                pad_token_id=0, bos_token_id=0, eos_token_id=None)
    return CognateConfig(**arch)


def decode_loop(model, prompts: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy decoding through the sampling loops' helper."""
    decoder = IncrementalDecoder(model, prompts)
    for _ in range(new_tokens):
        decoder.append(sample_next(decoder.logits(), 0.0, None))
    return decoder.sequence


def hf_generate(model, prompts: torch.Tensor, new_tokens: int) -> torch.Tensor:
    return model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, do_sample=False, use_cache=model.config.use_cache)


@torch.no_grad()
def timed(model, run, prompts: torch.Tensor, new_tokens: int, use_cache: bool, repeats: int):
    model.config.use_cache = use_cache
    best, output = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        output = run(model, prompts, new_tokens)
        best = min(best, time.perf_counter() - start)
    return best, output


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    config = tiny_preset_config(args.prompt_tokens + args.new_tokens)
    torch.manual_seed(args.seed)
    model = CognateForCausalLM(config).eval()
    with torch.no_grad():
        probe = torch.randint(1, config.vocab_size, (1, args.prompt_tokens + args.new_tokens))
        computed_steps = model(probe, use_cache=False).computed_steps
    runs = []
    for batch in args.batch_sizes:
        generator = torch.Generator().manual_seed(args.seed + batch)
        prompts = torch.randint(1, config.vocab_size, (batch, args.prompt_tokens), generator=generator)
        for loop, run in (("forge.decoding", decode_loop), ("transformers.generate", hf_generate)):
            cached_s, cached_out = timed(model, run, prompts, args.new_tokens, True, args.repeats)
            uncached_s, uncached_out = timed(model, run, prompts, args.new_tokens, False, args.repeats)
            if not torch.equal(cached_out, uncached_out):
                raise RuntimeError(f"{loop}, batch {batch}: the cache changed the generated tokens")
            tokens = batch * args.new_tokens
            runs.append({"loop": loop, "batch": batch, "new_tokens_per_s_cache": tokens / cached_s,
                         "new_tokens_per_s_no_cache": tokens / uncached_s, "seconds_cache": cached_s,
                         "seconds_no_cache": uncached_s, "speedup": uncached_s / cached_s})
            print(f"{loop:<22} batch {batch}: {tokens / cached_s:8.1f} tokens/s with the cache, "
                  f"{tokens / uncached_s:8.1f} without ({uncached_s / cached_s:.1f}x)", flush=True)
    model.config.use_cache = True
    payload = {
        "command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "cognate_config": {k: getattr(config, k) for k in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "sliding_window", "ltm_slots", "memory_dim", "memory_chunk_size", "trm_latent_updates",
            "trm_refinements", "act_max_steps", "act_threshold")},
        "params": get_model_size(model)["params"],
        "computed_steps_full_forward": computed_steps,
        "runs": runs,
    }
    if args.json:
        atomic_write_json(args.json, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
