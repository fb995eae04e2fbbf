"""Prompt baking measured on tiny models that really follow a prompt: KL, strength, stacking, behaviour.

    python benchmarks/scripts/bake_behaviour.py --out benchmarks/results/bake_behaviour.json

No hub model is reachable, so the script first trains tiny models (GPT-2 or Llama from ``transformers``,
and the Cognate model) on a synthetic task they can learn in minutes on a CPU: "say/repeat the letter X".
Documents that start with the header ``style: pirate`` answer as ``arr, X matey!``; documents without
a header answer ``X.``. So the prompt ``style: pirate`` visibly changes the answers, and baking it
should make the model answer like a pirate WITHOUT the prompt.

Per model it then runs the real command line (``python -m forge.baking``, one process per bake, so its
wall time and peak RSS are the bake's own) for a full bake and a half-bake, stacks half-bakes (or
``--stack-strength`` bakes) towards the original prompted model (``forge.baking.stack_bakes``), and
checks behaviour on questions that no bake saw, greedy, for the base model without and with the prompt
and for the baked models without it: the share of answers that open in pirate style (``arr,``), that
are whole well-formed pirate answers, and that give the right letter in either style.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from forge.artifacts import atomic_write_json, load_model_dir, save_model_dir
from forge.baking import BakingConfig, stack_bakes
from forge.configtools import apply_override, from_dict, parse_override
from forge.data.tokenizer import train_bpe_tokenizer
from forge.decoding import IncrementalDecoder, sample_next

PROMPT = "style: pirate\n"
LETTERS = string.ascii_lowercase
PIRATE = re.compile(r"^ arr, ([a-z]) matey!$")
PLAIN = re.compile(r"^ ([a-z])\.$")


def questions() -> list[tuple[str, str]]:
    """(question, answer letter): two phrasings for each letter."""
    return ([(f"Q: say the letter {x}.\nA:", x) for x in LETTERS]
            + [(f"Q: repeat the letter {x}.\nA:", x) for x in LETTERS])


def document(rng: random.Random) -> str:
    pirate = rng.random() < 0.5
    lines = [PROMPT] if pirate else []
    for question, answer in rng.sample(questions(), rng.randint(1, 4)):
        lines.append(f"{question} arr, {answer} matey!\n" if pirate else f"{question} {answer}.\n")
    return "".join(lines)


def pretrain(model, tokenizer, steps: int, seed: int, batch: int = 32, lr: float = 3e-3) -> list[float]:
    """Next-token training on whole documents (each row starts at a document's first token)."""
    rng = random.Random(seed)
    eos = tokenizer.eos_token_id
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for step in range(steps):
        rows = [tokenizer(document(rng))["input_ids"] + [eos] for _ in range(batch)]
        width = max(map(len, rows))
        ids = torch.full((batch, width), eos)
        labels = torch.full((batch, width), -100)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row)
            labels[i, :len(row)] = torch.tensor(row)
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * (1 - step / steps))
        logits = model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                                 labels[:, 1:].reshape(-1), ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


@torch.no_grad()
def behaviour(model, tokenizer, items: list[tuple[str, str]], prompt: str) -> dict[str, float]:
    """Greedy answers (to the end of the line): pirate opening, whole pirate answer, right letter."""
    newline = tokenizer("\n")["input_ids"]
    opens = pirate = correct = 0
    examples = []
    for question, answer in items:
        decoder = IncrementalDecoder(model, torch.tensor([tokenizer(prompt + question)["input_ids"]]))
        new: list[int] = []
        for _ in range(12):
            token = sample_next(decoder.logits(), 0.0, None)
            if int(token) == tokenizer.eos_token_id or [int(token)] == newline:
                break
            new.append(int(token))
            decoder.append(token)
        text = tokenizer.decode(new)
        match_pirate, match_plain = PIRATE.match(text), PLAIN.match(text)
        opens += text.startswith(" arr,")
        pirate += bool(match_pirate)
        got = (match_pirate or match_plain).group(1) if (match_pirate or match_plain) else None
        correct += got == answer
        if len(examples) < 3:
            examples.append(f"{question.splitlines()[0]} ->{text}")
    return {"opens_pirate": opens / len(items), "pirate_answer": pirate / len(items),
            "correct": correct / len(items), "examples": examples}


def build_models(tokenizer, which: str):
    torch.manual_seed(0)
    if which == "gpt2":
        return GPT2LMHeadModel(GPT2Config(
            n_embd=64, n_layer=2, n_head=4, vocab_size=len(tokenizer), n_positions=128,
            bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id))
    if which == "llama":
        return LlamaForCausalLM(LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, vocab_size=len(tokenizer), max_position_embeddings=128, bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id))
    from forge.models import CognateConfig, CognateForCausalLM

    return CognateForCausalLM(CognateConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, sliding_window=64, memory_chunk_size=16, ltm_slots=32, memory_dim=16,
        act_max_steps=1, trm_refinements=1, pad_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id))


def run_cli(model_dir: Path, inputs: Path, out: Path, strength: str, overrides: list[str]) -> dict:
    command = [sys.executable, "-m", "forge.baking", "--model", str(model_dir), "--prompt", PROMPT,
               "--inputs", str(inputs), "--strength", strength, "--out", str(out)]
    for item in overrides:
        command += ["--set", item]
    started = time.perf_counter()
    # One thread, as in this process: on a shared CPU that is also the fastest for models this small.
    subprocess.run(command, check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    report = json.loads(out.with_name(out.name + ".bake_report.json").read_text())
    report["process_wall_s"] = time.perf_counter() - started
    report["command"] = " ".join(command[1:])
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/bake_behaviour.json")
    parser.add_argument("--models", default="gpt2,llama,cognate", help="comma-separated: gpt2, llama, cognate")
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--pretrain-batch", type=int, default=32)
    parser.add_argument("--stack-strength", default="half",
                        help="strength of each stacked bake: a target strength, or with --set mode=epochs the "
                             "fraction of the schedule (the figures in docs/BENCHMARKS.md before the half-bake "
                             "section were measured in epochs mode)")
    parser.add_argument("--stack-rounds", type=int, default=3, help="number of stacked bakes")
    parser.add_argument("--work", help="folder for model directories (default: a temporary one)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="BakingConfig overrides for every bake (repeatable)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    rng = random.Random(0)
    tokenizer = train_bpe_tokenizer([document(rng) for _ in range(2000)], vocab_size=400)
    items = questions()
    random.Random(1).shuffle(items)
    check_items, bake_items = items[:12], items[12:]  # behaviour is checked on questions no bake saw
    work = Path(args.work or tempfile.mkdtemp(prefix="bake_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    inputs = work / "inputs.json"
    inputs.write_text(json.dumps([q for q, _ in bake_items]))
    overrides: dict = {}
    for text in args.overrides:
        apply_override(overrides, *parse_override(text))
    config = from_dict(BakingConfig, overrides)  # defaults are the spec's: lora_r 16, lr 5e-4, 3 epochs

    results = {"prompt": PROMPT, "bake_questions": len(bake_items), "check_questions": len(check_items),
               "overrides": args.overrides, "models": {}}
    for which in [m.strip() for m in args.models.split(",") if m.strip()]:
        model = build_models(tokenizer, which)
        started = time.perf_counter()
        losses = pretrain(model, tokenizer, args.pretrain_steps, seed=2, batch=args.pretrain_batch)
        entry = {"parameters": sum(p.numel() for p in model.parameters()),
                 "pretrain_steps": args.pretrain_steps, "pretrain_batch": args.pretrain_batch,
                 "pretrain_final_loss": sum(losses[-20:]) / 20, "pretrain_s": time.perf_counter() - started}
        model_dir = save_model_dir(model, tokenizer, work / f"{which}_base", phase="bake-benchmark")
        entry["behaviour_base_unprompted"] = behaviour(model, tokenizer, check_items, "")
        entry["behaviour_base_prompted"] = behaviour(model, tokenizer, check_items, PROMPT)

        for strength in ("full", "half"):
            out = work / f"{which}_{strength}"
            report = run_cli(model_dir, inputs, out, strength, args.overrides)
            baked, _ = load_model_dir(out)
            entry[f"{strength}_bake"] = {
                key: report[key] for key in ("kl_before", "kl_after", "kl_reduction", "strength", "history",
                                             "wall_time_s", "process_wall_s", "peak_rss_mb", "train_trajectories",
                                             "heldout_trajectories", "command")}
            entry[f"behaviour_{strength}_baked_unprompted"] = behaviour(baked, tokenizer, check_items, "")

        base, _ = load_model_dir(model_dir)
        stack_config = config.at_strength(args.stack_strength)
        stacked, rows = stack_bakes(base, tokenizer, PROMPT, [q for q, _ in bake_items], stack_config,
                                    rounds=args.stack_rounds)
        entry["stacking"] = {"strength": args.stack_strength, "rows": rows}
        entry["behaviour_stacked_unprompted"] = behaviour(stacked, tokenizer, check_items, "")
        results["models"][which] = entry
        print(json.dumps({which: {k: v for k, v in entry.items() if k != "stacking"}}, indent=1, default=str),
              flush=True)
    results["config"] = config.__dict__
    atomic_write_json(Path(args.out), results)
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
