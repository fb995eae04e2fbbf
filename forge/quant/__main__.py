"""Quantize a model directory to BitNet b1.58 ternary weights.

Usage: ``python -m forge.quant --model DIR --out DIR [--data-dir PATH] [--seq-len N] ...``

Runs Phase 4 on any model directory (a finished one, with manifest): calibration on WikiText-2,
staged block-by-block quantization under the accuracy guard, conservative restart or
straight-through fine-tuning when needed, packing (1.6 bits per ternary weight), and measurement.
The output directory loads with ``AutoModelForCausalLM.from_pretrained`` after ``import forge.quant``;
its manifest records the metrics and each spec criterion as met or missed. Exit codes: 0 done (even
with a missed criterion, which is reported), 2 bad usage or input.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from forge.artifacts import ArtifactError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from forge.quant.run import QuantizeJobConfig

    defaults = QuantizeJobConfig()
    parser = argparse.ArgumentParser(prog="python -m forge.quant", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="input model directory (with manifest.json)")
    parser.add_argument("--out", required=True, type=Path, help="output directory for the ternary model")
    parser.add_argument("--data-dir", default=defaults.data_dir,
                        help="reference data folder holding wikitext2/ (default: $FORGE_DATA_DIR)")
    parser.add_argument("--seq-len", type=int, default=defaults.seq_len)
    parser.add_argument("--eval-sequences", type=int, default=defaults.eval_sequences)
    parser.add_argument("--finetune-sequences", type=int, default=defaults.finetune_sequences)
    parser.add_argument("--metric", choices=("accuracy", "likelihood"), default=defaults.metric,
                        help="guard metric: next-token accuracy or exp(-NLL) on held-out WikiText-2 test")
    parser.add_argument("--guard-tasks", default=",".join(defaults.guard_tasks),
                        help="comma-separated benchmark tasks whose mean held-out score is the guard metric "
                             "(needs the data folder; default: --metric on held-out WikiText-2)")
    parser.add_argument("--guard-limit", type=int, default=defaults.guard_limit, help="items per guard task")
    parser.add_argument("--float-layers", choices=("int4", "int8", "float"), default=defaults.float_layers,
                        help="storage of the embedding, the head and the linears left in float (default: %(default)s)")
    parser.add_argument("--int4-group-size", type=int, default=defaults.int4_group_size,
                        help="weights per float16 scale in int4 storage (default: %(default)s)")
    parser.add_argument("--heal-steps", type=int, default=defaults.heal_steps,
                        help="straight-through fine-tuning steps after each quantized block, before the guard "
                             "judges it (default: %(default)s)")
    parser.add_argument("--heal-lr", type=float, default=defaults.heal_lr, help="their learning rate")
    parser.add_argument("--size-category", choices=("tiny", "small", "medium", "large"), default=None,
                        help="override the size category read from the model")
    parser.add_argument("--latency-batch", type=int, default=defaults.latency_batch)
    parser.add_argument("--latency-repeats", type=int, default=defaults.latency_repeats)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    import forge.models  # noqa: F401  (registers the Cognate architecture)
    import forge.quant  # noqa: F401  (registers the ternary quantizer with transformers)
    from benchmarks.guard import job_guard
    from forge.quant.run import QuantizeJobConfig, quantize_model_dir

    if args.model.resolve() == args.out.resolve():
        print("error: --out must differ from --model (the input model stays as it is)", file=sys.stderr)
        return 2
    try:
        job = QuantizeJobConfig(data_dir=args.data_dir, seq_len=args.seq_len, eval_sequences=args.eval_sequences,
                                finetune_sequences=args.finetune_sequences, metric=args.metric,
                                guard_tasks=tuple(t for t in args.guard_tasks.split(",") if t),
                                guard_limit=args.guard_limit, size_category=args.size_category,
                                float_layers=args.float_layers, int4_group_size=args.int4_group_size,
                                heal_steps=args.heal_steps, heal_lr=args.heal_lr,
                                latency_batch=args.latency_batch, latency_repeats=args.latency_repeats)
        metrics = quantize_model_dir(args.model, args.out, job, job_guard)
    except (ArtifactError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = {key: metrics[key] for key in ("size_category", "compression_ratio", "accuracy_before",
                                             "accuracy_packed", "accuracy_drop", "sparsity",
                                             "inference_speedup", "inference_speedup_limit", "criteria")}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
