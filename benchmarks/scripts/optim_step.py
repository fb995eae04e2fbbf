"""CPU time of one MuonGrokfast step against torch AdamW on a 51M-parameter Llama-shaped model.

Usage: python benchmarks/scripts/optim_step.py --json optim_step.json
Random gradients, 1 torch thread, process CPU time, median of steps 2-3. Also the Newton-Schulz FLOPs per
step (from the shapes) and this machine's 1-thread float32 matmul rate, to see the step is matmul-bound.
"""
import argparse
import json
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from forge.optim import MuonGrokfastConfig, build_muon_grokfast


def cpu_time(optimizer, steps=3):
    times = []
    for _ in range(steps):
        start = time.process_time()
        optimizer.step()
        times.append(time.process_time() - start)
    return statistics.median(times[1:])


def newton_schulz_flops(rows, cols, steps=5):
    small, big = min(rows, cols), max(rows, cols)
    return steps * (2 * small * small * big + 2 * small**3 + 2 * small * small * big)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                                         num_attention_heads=8, num_key_value_heads=8, vocab_size=50257,
                                         tie_word_embeddings=True))
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    muon = [p for p in model.parameters() if p.ndim == 2 and p is not model.model.embed_tokens.weight]
    result = {"params": sum(p.numel() for p in model.parameters()), "muon_params": sum(p.numel() for p in muon),
              "newton_schulz_gflop_per_step": sum(newton_schulz_flops(*p.shape) for p in muon) / 1e9, "threads": 1}
    result["muon_grokfast_cpu_s"] = cpu_time(build_muon_grokfast(model, MuonGrokfastConfig()))
    result["muon_no_grokfast_cpu_s"] = cpu_time(build_muon_grokfast(model, MuonGrokfastConfig(grokfast_lambda=0.0)))
    result["torch_adamw_cpu_s"] = cpu_time(torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False))
    a = torch.randn(512, 1408)
    start = time.process_time()
    for _ in range(20):
        a @ a.T
    result["matmul_gflops_1thread"] = 20 * 2 * 512 * 512 * 1408 / (time.process_time() - start) / 1e9
    with open(args.json, "w") as handle:
        json.dump(result, handle, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
