"""What storing the embedding and the head as int4 groups or int8 rows costs, on a trained model directory.

Two measurements on Phase 1's held-out documents (the text the pipeline's BitNet phase guards with when there is
no data folder, with the task world's easy problems; its replay documents calibrate):

- ``storage_only``: the float model with only its embedding, head and other float linears stored as float /
  int8 rows / int4 groups (no ternary layer): held-out next-token accuracy and perplexity, weight-file bytes.
- ``phase4``: ``forge.quant.run.quantize_model_dir`` with each ``float_layers`` option and the run's own
  ``bitnet`` settings (the tiny preset's), the guard as the phase passes it, and each ``--heal`` setting
  (``bitnet.heal_steps``, ``heal_lr``, ``finetune_sequences``): bytes on disk, compression, accuracy drop, the
  guard's decisions.

    python benchmarks/scripts/quant_storage.py --run-dir RUN/tiny --model RUN/tiny/evomerge/champion \\
        --threads 1 [--heal 0:0.001:400,150:0.001:1600] --json benchmarks/results/quant_storage.json
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

import forge.quant  # noqa: F401  (registers the ternary quantizer)
from benchmarks.guard import job_guard
from forge.artifacts import atomic_write_json, load_model_dir
from forge.config import PipelineConfig
from forge.data.heldout import HELDOUT, REPLAY
from forge.pipeline import read_run_texts
from forge.quant.convert import int8_candidates, pack_model, to_int4, to_int8
from forge.quant.measure import saved_weight_bytes
from forge.quant.run import next_token_scores, quantize_model_dir, text_token_ids

STORAGE = {  # name: (float_layers, int4_group_size)
    "float": ("float", 32), "int8": ("int8", 32), "int4-g32": ("int4", 32), "int4-g64": ("int4", 64),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="a pipeline run's preset folder (holds cognate/)")
    parser.add_argument("--model", type=Path, required=True, help="the model directory to quantize")
    parser.add_argument("--storage", default=",".join(STORAGE), help=f"options among {', '.join(STORAGE)}")
    parser.add_argument("--heal", default=None,
                        help="comma-separated STEPS:LR:SEQUENCES healing settings of the phase4 runs (default: the "
                             "preset's)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here (atomically)")
    args = parser.parse_args(argv)
    unknown = [s for s in args.storage.split(",") if s not in STORAGE]
    if unknown:
        parser.error(f"unknown storage {', '.join(unknown)}; choose from {', '.join(STORAGE)}")
    try:
        args.heal = [tuple(t(v) for t, v in zip((int, float, int), spec.split(":"), strict=True))
                     for spec in args.heal.split(",")] if args.heal else None
    except ValueError:
        parser.error(f"--heal {args.heal}: give STEPS:LR:SEQUENCES settings, e.g. 0:0.001:400,150:0.001:1600")
    return args


def storage_only(model_dir: Path, name: str, eval_ids: torch.Tensor) -> dict:
    float_layers, group_size = STORAGE[name]
    model, _ = load_model_dir(model_dir)
    model.float()
    names = int8_candidates(model, min_out_features=8)
    if float_layers == "int8":
        to_int8(model, names)
    elif float_layers == "int4":
        to_int4(model, names, group_size)
    pack_model(model)
    return {"storage": name, "layers": names, "weight_file_bytes": saved_weight_bytes(model),
            **next_token_scores(model, eval_ids)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    job = PipelineConfig().bitnet  # the tiny preset's Phase 4 settings (the embedded default)
    # As forge.phases.bitnet does without a data folder: the replay calibrates (and heals), the held-out guards.
    train_texts = read_run_texts(args.run_dir, REPLAY, max_chars=10**12)
    heldout_texts = read_run_texts(args.run_dir, HELDOUT, max_chars=10**12)
    _, tokenizer = load_model_dir(args.model)
    eval_ids = text_token_ids(tokenizer, heldout_texts, job.eval_sequences, job.seq_len)
    names = [s for s in args.storage.split(",") if s]
    results = {"command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
               "model": str(args.model), "job": dataclasses.asdict(job), "threads": torch.get_num_threads(),
               "load_average_start": os.getloadavg(), "storage_only": [], "phase4": []}
    for name in names:
        row = storage_only(args.model, name, eval_ids)
        results["storage_only"].append(row)
        print(f"storage only {name}: {row['weight_file_bytes']} bytes, accuracy {row['accuracy']:.4f}, "
              f"perplexity {row['perplexity']:.1f}", flush=True)
    heal = args.heal or [(job.heal_steps, job.heal_lr, job.finetune_sequences)]
    for name, (heal_steps, heal_lr, sequences) in [(name, h) for name in names for h in heal]:
        float_layers, group_size = STORAGE[name]
        run_job = dataclasses.replace(job, float_layers=float_layers, int4_group_size=group_size, data_dir=None,
                                      heal_steps=heal_steps, heal_lr=heal_lr, finetune_sequences=sequences)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            metrics = quantize_model_dir(args.model, Path(tmp) / "out", run_job, job_guard,
                                         texts=(train_texts, heldout_texts))
        keys = ("weight_bytes_before", "weight_bytes_after", "compression_ratio", "accuracy_before",
                "accuracy_quantized", "accuracy_finetuned", "accuracy_packed", "accuracy_drop", "heldout_before",
                "heldout_after", "inference_speedup", "reverted_layers", "quantized_layers", "criteria")
        row = {"storage": name, "heal_steps": heal_steps, "heal_lr": heal_lr, "finetune_sequences": sequences,
               "guard_metric": metrics["guard_metric"], "wall_s": time.perf_counter() - start,
               **{k: metrics[k] for k in keys},
               "int8_layers": metrics["int8_layers"]["names"], "int4_layers": metrics["int4_layers"]["names"],
               "steps": [(s["group"], s["accuracy"], s["drop"], s["reverted"]) for s in metrics["steps"]]}
        results["phase4"].append(row)
        print(f"phase 4 {name}, healing {heal_steps} x {heal_lr} on {sequences}: {row['weight_bytes_before']} -> {row['weight_bytes_after']} bytes "
              f"(x{row['compression_ratio']:.2f}), accuracy {row['accuracy_before']:.4f} -> "
              f"{row['accuracy_packed']:.4f} (drop {100 * row['accuracy_drop']:.1f}%), perplexity "
              f"{row['heldout_before']['perplexity']:.1f} -> {row['heldout_after']['perplexity']:.1f}; "
              f"steps {row['steps']}", flush=True)
    results["load_average_end"] = os.getloadavg()
    if args.json:
        atomic_write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
