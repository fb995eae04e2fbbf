"""Learning curve of a Cognate model on the task world: held-out exact match per family and level after
training from scratch on a token budget.

The model is ``forge.models.CognateForCausalLM`` with the tiny preset's architecture (``--hidden``,
``--layers``, ``--intermediate`` change its size; ``--model gpt2``: a GPT-2 of those sizes instead), trained by Phase 1's own loop (``forge.pretrain.trainer.train``:
MuonGrokfast at the preset's settings, warm-up and cosine decay, packed 128-token blocks of documents
each followed by end-of-text) on ``forge.data.taskworld.training_texts`` (train side only). The
tokenizer is the preset's byte-level BPE (one token per digit) trained on those texts; the model's
vocabulary is padded to the preset's 4096 so a token costs what it costs in the pipeline. One run trains
for the largest budget of ``--tokens`` (warm-up and cosine decay span it); when it reaches each budget
the fixed held-out set (``heldout_set``) is answered greedily (``benchmarks.lm.generate_until``, prompts of
each ``--eval-modes`` mode) and scored by ``forge.data.taskworld.is_correct``.

    python benchmarks/scripts/taskworld_learning_curve.py --tokens 100000 200000 --json OUT.json
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from forge.artifacts import atomic_write_json
from forge.config import load_pipeline_config
from forge.data import taskworld
from forge.data.lm_dataset import blocks_from_stream, token_stream
from forge.data.tokenizer import train_bpe_tokenizer
from forge.models import CognateConfig, CognateForCausalLM
from forge.models.size import sum_parameters
from forge.tracking import Tracker, TrackingConfig
from forge.pretrain.trainer import Stage, set_seed, torch_threads, train

from benchmarks.lm import generate_until

UNTIL = {"direct": ("\n",), "work": ("\nQuestion:", "\n\n"), "calculator": ("</calc>", "</answer>")}
MAX_NEW_TOKENS = {"direct": 16, "work": 192, "calculator": 48}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", required=True,
                        help="training-token budgets; accuracy is measured after each (ascending)")
    parser.add_argument("--hidden", type=int, default=None, help="hidden size (default: the tiny preset's)")
    parser.add_argument("--layers", type=int, default=None, help="layers (default: the tiny preset's)")
    parser.add_argument("--intermediate", type=int, default=None, help="MLP width (default: 2.75 x hidden)")
    parser.add_argument("--model", choices=("cognate", "gpt2"), default="cognate",
                        help="gpt2: a transformers GPT-2 of the same width, layers and heads through the same loop "
                             "(the baseline that tells Cognate's cost per token from the budget's size)")
    parser.add_argument("--families", nargs="+", default=list(taskworld.FAMILIES), choices=taskworld.FAMILIES)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 3], choices=taskworld.LEVELS)
    parser.add_argument("--modes", nargs="+", default=["direct"], choices=taskworld.MODES,
                        help="training modes (drawn uniformly per document)")
    parser.add_argument("--eval-modes", nargs="+", default=None, choices=("direct", "work"),
                        help="modes whose prompts are answered (default: the training modes without calculator)")
    parser.add_argument("--eval-per-cell", type=int, default=20, help="held-out problems per family and level")
    parser.add_argument("--vocab-size", type=int, default=None, help="model vocabulary (default: the preset's BPE)")
    parser.add_argument("--batch-size", type=int, default=None, help="sequences per step (default: the preset's)")
    parser.add_argument("--lr", type=float, default=None, help="Muon and Adam learning rate (default: the preset's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, required=True, help="write the results here (atomically)")
    args = parser.parse_args(argv)
    if args.tokens != sorted(args.tokens) or min(args.tokens) < 1:
        parser.error("--tokens must be positive and ascending")
    if args.eval_per_cell < 1 or args.threads < 1:
        parser.error("--eval-per-cell and --threads must be >= 1")
    args.eval_modes = args.eval_modes or [mode for mode in args.modes if mode != "calculator"] or ["direct"]
    return args


def build_setup(args):
    """(architecture dict, CognateTrainConfig) from the tiny preset and the arguments."""
    preset = load_pipeline_config("tiny")
    arch = dict(preset.cognate.architecture)
    if args.hidden:
        arch["hidden_size"] = args.hidden
        arch["intermediate_size"] = args.intermediate or round(2.75 * args.hidden)
    if args.layers:
        arch["num_hidden_layers"] = args.layers
    if args.intermediate:
        arch["intermediate_size"] = args.intermediate
    spec = preset.cognate.models[0]
    arch.update(act_threshold=spec.act_threshold, ltm_slots=spec.ltm_slots)
    train_cfg = preset.cognate.train
    train_cfg.precision = "float32"
    if args.batch_size:
        train_cfg.batch_size = args.batch_size
    if args.lr:
        train_cfg.optimizer.muon_lr = train_cfg.optimizer.adam_lr = args.lr
    return arch, train_cfg, args.vocab_size or preset.cognate.data.bpe_vocab_size


def evaluate(model, tokenizer, items, modes) -> dict:
    """Exact match per mode, family and level (and overall) of greedy answers to the held-out items."""
    results = {}
    for mode in modes:
        started = time.perf_counter()
        outputs = generate_until(model, tokenizer, [taskworld.prompt(item, mode) for item in items],
                                 until=UNTIL[mode], max_new_tokens=MAX_NEW_TOKENS[mode], batch_size=32)
        correct = [taskworld.is_correct(item.answer, output) for item, output in zip(items, outputs)]
        cells: dict[str, list[bool]] = {}
        for item, ok in zip(items, correct):
            cells.setdefault(item.cell, []).append(ok)
        results[mode] = {"exact_match": sum(correct) / len(correct), "n": len(correct),
                         "cells": {cell: {"exact_match": sum(v) / len(v), "n": len(v)} for cell, v in cells.items()},
                         "examples": [{"prompt": taskworld.prompt(item, mode), "output": output, "answer": item.answer}
                                      for item, output in list(zip(items, outputs))[:: max(1, len(items) // 6)]],
                         "eval_s": round(time.perf_counter() - started, 1)}
    return results


class CurveTracker(Tracker):
    """Phase 1's metrics log, which also measures held-out accuracy when training reaches a budget's step
    (an observer of ``forge.pretrain.trainer.train``: one continuous run gives every point of the curve)."""

    def __init__(self, directory: Path, model, tokenizer, items, modes, eval_steps: set[int], tokens_per_step: int):
        super().__init__(directory, name="taskworld", config=TrackingConfig(wandb_mode="disabled"))
        self.tokens_per_step = tokens_per_step
        self.model, self.tokenizer, self.items, self.modes, self.eval_steps = model, tokenizer, items, modes, eval_steps
        self.points: list[dict] = []
        self.losses: list[dict] = []
        self.started, self.cpu_started = time.perf_counter(), time.process_time()
        self.eval_s, self.eval_cpu_s = 0.0, 0.0

    def log(self, metrics: dict, step: int | None = None) -> None:
        super().log(metrics, step)
        if "train/loss" not in metrics:
            return
        self.losses.append({"step": step, "loss": round(metrics["train/loss"], 4)})
        if step not in self.eval_steps:
            return
        began, cpu_began = time.perf_counter(), time.process_time()
        self.model.eval()
        accuracy = evaluate(self.model, self.tokenizer, self.items, self.modes)
        self.model.train()
        # The evaluations' time is not training time; CPU time is what a shared machine does not distort.
        train_s = began - self.started - self.eval_s
        train_cpu_s = cpu_began - self.cpu_started - self.eval_cpu_s
        trained = step * self.tokens_per_step
        point = {"tokens": trained, "steps": step, "train_s": round(train_s, 1), "train_cpu_s": round(train_cpu_s, 1),
                 "tokens_per_s": round(trained / train_s, 1), "tokens_per_cpu_s": round(trained / train_cpu_s, 1),
                 "train_loss": self.losses[-1]["loss"], "accuracy": accuracy}
        self.eval_s += time.perf_counter() - began
        self.eval_cpu_s += time.process_time() - cpu_began
        self.points.append(point)
        print(json.dumps({k: v for k, v in point.items() if k != "accuracy"} |
                         {mode: round(r["exact_match"], 3) for mode, r in accuracy.items()}), flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch_threads(args.threads)
    set_seed(args.seed)
    arch, cfg, vocab = build_setup(args)
    block = cfg.seq_len
    steps_total = -(-args.tokens[-1] // (cfg.batch_size * block))

    # Training documents: the BPE is trained on a first 4000, which also give the tokens per document.
    started = time.perf_counter()
    needed = steps_total * cfg.batch_size * block
    sample = taskworld.training_texts(4000, seed=args.seed, families=args.families, levels=args.levels,
                                      modes=args.modes)
    tokenizer = train_bpe_tokenizer(sample, vocab, seed=args.seed)
    per_document = len(token_stream(tokenizer(sample, add_special_tokens=False)["input_ids"], 0)) / len(sample)
    texts = taskworld.training_texts(int(1.1 * needed / per_document) + 100, seed=args.seed, families=args.families,
                                     levels=args.levels, modes=args.modes)
    stream = token_stream(tokenizer(texts, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id)
    if len(stream) < needed:
        raise RuntimeError(f"generated {len(stream)} training tokens, fewer than the {needed} needed")
    if len(tokenizer) > vocab:
        raise SystemExit(f"the tokenizer has {len(tokenizer)} tokens, more than --vocab-size {vocab}")
    blocks = blocks_from_stream(stream, block)[:steps_total * cfg.batch_size]
    items = taskworld.heldout_set(args.eval_per_cell, families=args.families, levels=args.levels)
    val_stream = token_stream(tokenizer([taskworld.text(item, mode) for item in items for mode in args.eval_modes],
                                        add_special_tokens=False)["input_ids"], tokenizer.eos_token_id)
    val_blocks = blocks_from_stream(val_stream, block)
    data_s = time.perf_counter() - started

    config = CognateConfig(**arch, vocab_size=vocab, pad_token_id=tokenizer.pad_token_id,
                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    cfg.checkpoint_every = 10 ** 9  # the loop still writes its start and end-of-epoch checkpoints
    cfg.max_steps_per_epoch = steps_total
    if args.model == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        baseline = GPT2Config(n_embd=arch["hidden_size"], n_layer=arch["num_hidden_layers"],
                              n_head=arch["num_attention_heads"], n_inner=arch["intermediate_size"], vocab_size=vocab,
                              n_positions=arch["max_position_embeddings"], bos_token_id=tokenizer.bos_token_id,
                              eos_token_id=tokenizer.eos_token_id)
        model = GPT2LMHeadModel(baseline)
    else:
        model = CognateForCausalLM(config)
    stage = Stage(name="taskworld", blocks=blocks, epochs=1)
    eval_steps = {-(-budget // (cfg.batch_size * block)) for budget in args.tokens}
    with tempfile.TemporaryDirectory() as tmp:
        tracker = CurveTracker(Path(tmp), model, tokenizer, items, args.eval_modes, eval_steps,
                               cfg.batch_size * block)
        summary = train(model, [stage], val_blocks, cfg, checkpoint_dir=Path(tmp), tracker=tracker,
                        device=torch.device("cpu"), seed=args.seed, micro_batch=cfg.batch_size)
    points = tracker.points
    points[-1].update(val_loss=round(summary["val/loss"], 4), val_token_accuracy=round(summary["val/accuracy"], 4))
    result = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "model": args.model, "architecture": {**arch, "vocab_size": vocab},
        "parameters": sum(p.numel() for p in model.parameters()) if args.model == "gpt2" else sum_parameters(config),
        "tokenizer_tokens": len(tokenizer), "batch_size": cfg.batch_size, "seq_len": block,
        "optimizer": {"muon_lr": cfg.optimizer.muon_lr, "adam_lr": cfg.optimizer.adam_lr},
        "families": args.families, "levels": args.levels, "modes": args.modes, "eval_modes": args.eval_modes,
        "eval_items": len(items), "threads": args.threads, "data_s": round(data_s, 1),
        "machine": {"platform": platform.platform(), "torch": torch.__version__},
        "tokens_per_s": points[-1]["tokens_per_s"],
        "points": points,
        "train_loss": tracker.losses[:: max(1, len(tracker.losses) // 40)] + tracker.losses[-1:],
    }
    atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
