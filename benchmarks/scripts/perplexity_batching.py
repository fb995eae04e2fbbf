"""Sliding-window perplexity with its windows one per forward pass against batched (``benchmarks.lm.perplexity``'s
``max_batch_tokens``): the figure of each (it must be the same, exactly) and the seconds each takes, per model and
text size. JSON out.

    python benchmarks/scripts/perplexity_batching.py --texts /tmp/run10/tiny/cognate/heldout_texts.json \\
        /tmp/run10/tiny/evomerge/champion /tmp/run10/tiny/quietstar/model /tmp/run10/tiny/curriculum/model \\
        --json benchmarks/results/perplexity_batching.json
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import forge  # noqa: E402,F401  (registers the Cognate architecture)
from benchmarks.lm import perplexity  # noqa: E402
from forge.artifacts import atomic_write_json, load_model_dir  # noqa: E402
from forge.data.heldout import read_texts  # noqa: E402

SIZES = ((10000, 128), (6000, 128), (3000, 64))  # (characters, window): EvoMerge's fitness, Phases 3 and 5, a short one


def timed(function, repeats: int) -> tuple[float, float]:
    """(value, median seconds) of ``repeats`` calls."""
    seconds, value = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        value = function()
        seconds.append(time.perf_counter() - started)
    return value, statistics.median(seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", help="model directories")
    parser.add_argument("--texts", required=True, help="a declared text file (Phase 1's heldout_texts.json)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for path in args.models:
        model, tokenizer = load_model_dir(path, device="cpu")
        model.eval()
        for chars, window in SIZES:
            texts = read_texts(Path(args.texts), chars)
            alone, alone_s = timed(lambda: perplexity(model, tokenizer, texts, max_length=window,
                                                      max_batch_tokens=window), args.repeats)
            batched, batched_s = timed(lambda: perplexity(model, tokenizer, texts, max_length=window), args.repeats)
            rows.append({"model": path, "characters": chars, "window": window, "one_window_per_pass": alone,
                         "batched": batched, "identical": alone == batched, "one_window_per_pass_s": alone_s,
                         "batched_s": batched_s, "speedup": alone_s / batched_s})
            print(rows[-1], flush=True)
    atomic_write_json(Path(args.json), {"command": " ".join(["perplexity_batching.py", *(argv or sys.argv[1:])]),
                                        "threads": args.threads, "repeats": args.repeats, "rows": rows})
    return 0 if all(row["identical"] for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
