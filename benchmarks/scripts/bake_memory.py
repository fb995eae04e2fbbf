"""Peak memory and wall time of a bake with the real 50257-token GPT-2 vocabulary, by KL chunk size.

    python benchmarks/scripts/bake_memory.py --inputs ../shared/data/gsm8k/train.jsonl \
        --out benchmarks/results/bake_memory.json

Builds a small Llama (hidden 64, 2 layers, untied 50257-token head; random weights: only memory and
time are measured here) as a model directory, then runs ``python -m forge.baking`` once per
``kl_chunk_tokens`` value, each in its own process, and collects each report's peak RSS and wall
time. A chunk larger than every batch is the unchunked baseline: all full-vocabulary float32 logits
of a batch, on both sides, at once.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from forge.artifacts import atomic_write_json, save_model_dir
from forge.data.tokenizer import load_gpt2_tokenizer

PROMPT = "You are a careful math tutor. Think step by step and end with 'The answer is N.'\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", required=True, help="inputs file for the bake (e.g. GSM8K train jsonl)")
    parser.add_argument("--limit", type=int, default=20, help="inputs used (default 20)")
    parser.add_argument("--chunks", default="64,256,1000000", help="kl_chunk_tokens values to compare")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--out", default="benchmarks/results/bake_memory.json")
    args = parser.parse_args(argv)

    tokenizer = load_gpt2_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        vocab_size=len(tokenizer), max_position_embeddings=512, tie_word_embeddings=False, bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id))
    work = Path(tempfile.mkdtemp(prefix="bake_memory_"))
    model_dir = save_model_dir(model, tokenizer, work / "base", phase="bake-benchmark")
    runs = []
    for chunk in [int(c) for c in args.chunks.split(",")]:
        out = work / f"baked_{chunk}"
        command = [sys.executable, "-m", "forge.baking", "--model", str(model_dir), "--prompt", PROMPT,
                   "--inputs", args.inputs, "--limit", str(args.limit), "--strength", "half", "--out", str(out),
                   "--set", f"kl_chunk_tokens={chunk}", "--set", f"batch_size={args.batch_size}",
                   "--set", f"max_new_tokens={args.max_new_tokens}", "--save", "adapter"]
        subprocess.run(command, check=True, capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
        report = json.loads(out.with_name(out.name + ".bake_report.json").read_text())
        row = {"kl_chunk_tokens": chunk, "peak_rss_mb": report["peak_rss_mb"], "wall_time_s": report["wall_time_s"],
               "kl_before": report["kl_before"], "kl_after": report["kl_after"],
               "train_tokens": report["train_tokens"], "command": " ".join(command[1:])}
        runs.append(row)
        print(json.dumps(row), flush=True)
    result = {"model": "Llama hidden 64, 2 layers, vocab 50257 (untied head)", "batch_size": args.batch_size,
              "max_new_tokens": args.max_new_tokens, "inputs": args.inputs, "limit": args.limit, "runs": runs}
    atomic_write_json(Path(args.out), result)
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
