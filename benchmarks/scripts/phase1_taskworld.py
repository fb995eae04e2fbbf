"""Phase 1's models on the task world's easy held-out problems, per family and level, and on one common held-out text.

For each run directory (``--run NAME=DIR``, a pipeline run with Phase 1 done) and each of its Phase 1 models (the
trunk in ``cognate/work/trunk_model`` too, when there is one): exact match on every ``taskworld_easy`` item (direct
mode, greedy, the harness), per cell (``add_1`` ...) with a seeded 95% bootstrap interval; for comparison
questions, the share of answers that name one of the two numbers (picking either at random scores 0.5 of those);
and the perplexity of the first run's held-out documents (the scoreboard's selection: ``scoreboard.heldout_chars``),
so that runs with different mixes are compared on the same text (held-out documents are chosen by a hash of the
text, so no run trained on them). Also copies each run's Phase 1 wall time and trunk figures from its manifest.

    python benchmarks/scripts/phase1_taskworld.py --run before=/tmp/tm-runs/before --run after=/tmp/tm-runs/after \
        --json benchmarks/results/phase1_taskworld.json
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

TASK = "taskworld_easy"


def _interval(values, seed: int) -> list[float]:
    import numpy as np

    from benchmarks.scoreboard import bootstrap_interval

    return list(bootstrap_interval([np.asarray(values, dtype=float)], np.mean, resamples=1000, seed=seed,
                                   confidence=0.95))


def score_model(model_dir: Path, texts: list[str], seed: int) -> dict:
    import torch

    from benchmarks.harness import evaluate
    from benchmarks.lm import encode, perplexity
    from benchmarks.tasks import get_task, load_docs
    from forge.artifacts import load_model_dir

    model, tokenizer = load_model_dir(model_dir)
    model.eval()
    started = time.process_time()
    docs = {doc["id"]: doc for doc in load_docs(get_task(TASK), None)}
    with torch.no_grad():
        result = evaluate(model, tokenizer, [TASK], limit=None, seed=seed, heldout_only=True, log_samples=True)[TASK]
        nll, tokens = 0.0, 0
        for text in texts:
            scored = len(encode(tokenizer, text)) - 1
            if scored >= 1:
                nll += math.log(perplexity(model, tokenizer, [text])) * scored
                tokens += scored
    cells: dict[str, list[float]] = {}
    either, cmp_items = 0, 0
    for sample in result.samples:
        doc = docs[sample["id"]]
        cells.setdefault(doc["cell"], []).append(sample["exact_match"])
        if doc["family"] == "cmp":
            from forge.data.taskworld import extract_answer

            cmp_items += 1
            either += extract_answer(sample["generation"]) in re.findall(r"\d+", doc["prompt"])
    values = [s["exact_match"] for s in result.samples]
    return {
        "exact_match": sum(values) / len(values), "interval": _interval(values, seed), "items": len(values),
        "cells": {cell: {"exact_match": sum(v) / len(v), "correct": int(sum(v)), "items": len(v),
                         "interval": _interval(v, seed)} for cell, v in sorted(cells.items())},
        "cmp_names_one_of_the_two": either / cmp_items if cmp_items else None,
        "common_heldout_perplexity": math.exp(nll / tokens), "common_heldout_tokens": tokens,
        "examples": [{"id": s["id"], "generation": s["generation"]} for s in result.samples[:6]],
        "cpu_s": round(time.process_time() - started, 1),
    }


def run_record(run_dir: Path) -> dict:
    from forge.artifacts import read_json

    manifest = read_json(run_dir / "cognate" / "manifest.json")
    summary = manifest["summary"]
    trunk = summary.get("trunk") or {}
    return {
        "phase1_wall_s": manifest.get("wall_time_s"),
        "trunk": {k: trunk.get(k) for k in ("steps", "tokens", "corpus_tokens", "taskworld_corpus_tokens",
                                            "val/perplexity", "tokens_per_s_this_session")},
        "models": {name: {"steps": m.get("steps"), "tokens": m.get("tokens"), "val_perplexity": m.get("val/perplexity"),
                          "tokens_per_s": m.get("tokens_per_s_this_session"),
                          "taskworld_corpus_tokens": m["data"].get("taskworld_corpus_tokens"),
                          "corpus_tokens": m["data"].get("corpus_tokens")}
                   for name, m in summary["models"].items()},
    }


def main(argv: list[str] | None = None) -> int:
    import torch

    from forge.artifacts import atomic_write_json
    from forge.config import ScoreboardConfig
    from forge.data.heldout import HELDOUT
    from forge.pipeline import read_run_texts

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, help="NAME=RUN_DIR (a run with Phase 1 done)")
    parser.add_argument("--json", type=Path, required=True, help="write the results here")
    parser.add_argument("--seed", type=int, default=1234, help="the bootstrap's seed (the scoreboard's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    runs = {}
    for item in args.run:
        name, sep, path = item.partition("=")
        if not sep or not (Path(path) / "cognate" / "manifest.json").is_file():
            parser.error(f"--run {item!r}: give NAME=RUN_DIR of a run whose Phase 1 finished (cognate/manifest.json)")
        runs[name] = Path(path)
    torch.set_num_threads(args.threads)
    common = next(iter(runs.values())) / "cognate"
    texts = read_run_texts(common.parent, HELDOUT, ScoreboardConfig().heldout_chars)
    result = {"task": TASK, "common_heldout_from": str(common), "runs": {}}
    for name, run_dir in runs.items():
        record = run_record(run_dir)
        dirs = {path.name.removeprefix("model_"): path for path in sorted((run_dir / "cognate").glob("model_*"))}
        if (run_dir / "cognate" / "work" / "trunk_model").is_dir():
            dirs = {"trunk": run_dir / "cognate" / "work" / "trunk_model", **dirs}
        record["scores"] = {}
        for model_name, path in dirs.items():
            record["scores"][model_name] = score = score_model(path, texts, args.seed)
            print(json.dumps({"run": name, "model": model_name, "exact_match": round(score["exact_match"], 3),
                              "cells": {c: f"{v['correct']}/{v['items']}" for c, v in score["cells"].items()},
                              "cmp_either": score["cmp_names_one_of_the_two"],
                              "common_ppl": round(score["common_heldout_perplexity"], 1)}), flush=True)
        result["runs"][name] = record
    atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
