"""Measure the tool-use benchmark on a tiny model trained here on worked tool-use transcripts.

Trains a byte-level BPE and a tiny Llama on train-side transcripts (``demonstrations``: real
calculator / sandbox outputs) in the benchmark's own context format, then evaluates the untrained and
the trained model on held-out problems with the spec's initial tool prompt, and writes JSON.

    python -m benchmarks.scripts.tooluse_measure --out /tmp/tooluse_tiny.json --steps 600 --sources easy,svamp
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from forge.artifacts import atomic_write_json
from forge.data.tokenizer import END_OF_TEXT, train_bpe_tokenizer

from benchmarks.lm import encode
from benchmarks.tooluse import (INITIAL_TOOL_PROMPT, SOURCES, ToolUseConfig, evaluate_tool_use, load_problems,
                                training_examples)


def train(model, tokenizer, examples, *, steps: int, batch_size: int, lr: float, max_length: int, seed: int):
    """Next-token training on the transcripts only (the context is input, not target); returns the
    mean loss of the last 50 steps."""
    rows = []
    for context, transcript in examples:
        context_ids = encode(tokenizer, context)
        target_ids = encode(tokenizer, transcript) + [tokenizer.eos_token_id]
        ids = (context_ids + target_ids)[-max_length:]
        labels = ([-100] * len(context_ids) + target_ids)[-max_length:]
        rows.append((ids, labels))
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for step in range(steps):
        batch = [rows[i] for i in torch.randint(len(rows), (batch_size,), generator=generator).tolist()]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((batch_size, width), tokenizer.eos_token_id)
        labels = torch.full((batch_size, width), -100)
        attention = torch.zeros((batch_size, width), dtype=torch.long)
        for row, (ids, target) in enumerate(batch):
            input_ids[row, :len(ids)] = torch.tensor(ids)
            labels[row, :len(target)] = torch.tensor(target)
            attention[row, :len(ids)] = 1
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 50) * (1 - step / steps)
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if (step + 1) % 100 == 0:
            print(f"step {step + 1}/{steps} loss {sum(losses[-100:]) / 100:.3f}", file=sys.stderr, flush=True)
    model.eval()
    tail = losses[-50:]
    return sum(tail) / len(tail)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--sources", default="easy,svamp", help=f"comma-separated, from {','.join(SOURCES)}")
    parser.add_argument("--eval-sources", default=None, help="held-out sources to evaluate (default: --sources)")
    parser.add_argument("--data-dir", default=None, help="reference data (default FORGE_DATA_DIR)")
    parser.add_argument("--steps", type=int, default=600, help="training steps")
    parser.add_argument("--train-limit", type=int, default=None, help="train problems per source (default all)")
    parser.add_argument("--eval-limit", type=int, default=50, help="held-out problems per source")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--num-samples", type=int, default=10)
    parser.add_argument("--num-fewshot", type=int, default=1)
    parser.add_argument("--max-turns", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (more threads slow tiny matrices on a shared machine)")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)
    sources = [s for s in args.sources.split(",") if s]
    eval_sources = [s for s in (args.eval_sources or args.sources).split(",") if s]
    if any(s not in SOURCES for s in sources + eval_sources):
        parser.error(f"sources must come from {', '.join(SOURCES)}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    config = ToolUseConfig(max_turns=args.max_turns, max_new_tokens=args.max_new_tokens,
                           num_fewshot=args.num_fewshot, num_samples=args.num_samples, seed=args.seed)
    prompt = INITIAL_TOOL_PROMPT
    start = time.perf_counter()
    examples = training_examples(sources, config, prompt, args.data_dir, args.train_limit)
    tokenizer = train_bpe_tokenizer([c + t for c, t in examples], vocab_size=args.vocab, seed=args.seed,
                                    max_texts=2000)
    lengths = [len(encode(tokenizer, c + t)) for c, t in examples]
    max_length = 1024
    model = LlamaForCausalLM(LlamaConfig(
        hidden_size=args.hidden, intermediate_size=4 * args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=max(2, args.hidden // 32), num_key_value_heads=max(2, args.hidden // 32),
        vocab_size=len(tokenizer), max_position_embeddings=max_length,
        eos_token_id=tokenizer.convert_tokens_to_ids(END_OF_TEXT),
        pad_token_id=tokenizer.convert_tokens_to_ids(END_OF_TEXT)))
    problems = load_problems(eval_sources, heldout=True, limit=args.eval_limit, seed=args.seed, data_dir=args.data_dir)
    fewshot = load_problems(eval_sources, heldout=False, data_dir=args.data_dir)
    prep_s = time.perf_counter() - start

    def evaluate():
        began = time.perf_counter()
        result = evaluate_tool_use(model, tokenizer, prompt=prompt, problems=problems, config=config, fewshot=fewshot)
        return result, time.perf_counter() - began

    print(f"prepared {len(examples)} examples in {prep_s:.0f} s", file=sys.stderr, flush=True)
    untrained, untrained_s = evaluate()
    print(f"untrained evaluated in {untrained_s:.0f} s", file=sys.stderr, flush=True)
    began = time.perf_counter()
    final_loss = train(model, tokenizer, examples, steps=args.steps, batch_size=16, lr=3e-3,
                       max_length=max_length, seed=args.seed)
    train_s = time.perf_counter() - began
    trained, trained_s = evaluate()
    report = {
        "command": "python -m benchmarks.scripts.tooluse_measure " + " ".join(sys.argv[1:] if argv is None else argv),
        "prompt": prompt, "train_sources": sources, "eval_sources": eval_sources,
        "train_examples": len(examples), "mean_train_tokens": sum(lengths) / len(lengths),
        "model": {"arch": "llama", "hidden": args.hidden, "layers": args.layers, "vocab": len(tokenizer),
                  "parameters": sum(p.numel() for p in model.parameters())},
        "steps": args.steps, "final_train_loss": final_loss, "config": trained.config,
        "n_items": trained.n_items, "threads": args.threads, "cpu_count": os.cpu_count(),
        "seconds": {"prepare": prep_s, "eval_untrained": untrained_s, "train": train_s, "eval_trained": trained_s},
        "untrained": untrained.metrics, "trained": trained.metrics,
        "trained_examples": [{k: r[k] for k in ("id", "correct", "turns", "stopped", "transcript")}
                             for r in trained.records[:6]],
    }
    atomic_write_json(args.out, report)
    print(json.dumps({"untrained": untrained.metrics, "trained": trained.metrics, "seconds": report["seconds"]},
                     indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
