"""Throughput of 1, 2 and 4 BenchmarkActors evaluating the same candidates (parallel efficiency).

    python benchmarks/scripts/actor_scaling.py --data-dir ../shared/data \
        --out benchmarks/results/actor_scaling.json

Each pool size gets fresh actors sharing the machine's CPUs equally (``num_cpus = cpus / actors``,
at most 1); actor start-up and a warm-up evaluation are timed separately from the measured run, in
which every actor pulls candidates (state dicts put once in the object store) as it frees up.
Efficiency = throughput(k) / (k * throughput(1)).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("FORGE_DATA_DIR"))
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "actor_scaling.json")
    parser.add_argument("--pools", default="1,2,4", help="pool sizes to measure")
    parser.add_argument("--candidates", type=int, default=8, help="distinct weight sets to evaluate")
    parser.add_argument("--tasks", default="arc_easy", help="comma-separated tasks per candidate")
    parser.add_argument("--limit", type=int, default=100, help="items per task")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs given to Ray")
    parser.add_argument("--hidden", type=int, default=128, help="hidden size of the GPT-2-architecture model")
    parser.add_argument("--layers", type=int, default=4, help="layers of the model")
    args = parser.parse_args(argv)
    if args.data_dir is None or not Path(args.data_dir).is_dir():
        parser.error("pass --data-dir (or set FORGE_DATA_DIR) to the reference data folder")

    import ray
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from actors.benchmark_actor import BenchmarkActor, evaluate_on_pool
    from forge.artifacts import atomic_write_json, save_model_dir
    from forge.data.tokenizer import load_gpt2_tokenizer

    tokenizer = load_gpt2_tokenizer()
    config = GPT2Config(n_embd=args.hidden, n_layer=args.layers, n_head=4, vocab_size=len(tokenizer), n_positions=512)
    torch.manual_seed(0)
    model_dir = save_model_dir(GPT2LMHeadModel(config), tokenizer, Path("/tmp/actor_scaling/model"), phase="bench")
    candidates = []
    for seed in range(1, args.candidates + 1):
        torch.manual_seed(seed)
        candidates.append(GPT2LMHeadModel(config).state_dict())
    tasks = [name.strip() for name in args.tasks.split(",")]
    kwargs = {"limit": args.limit}

    ray.init(num_cpus=args.cpus, num_gpus=0, include_dashboard=False, log_to_driver=False)
    refs = [ray.put(state) for state in candidates]
    rows = []
    load_before = os.getloadavg()
    for size in (int(k) for k in args.pools.split(",")):
        cpus = min(1.0, args.cpus / size)
        start = time.perf_counter()
        actors = [BenchmarkActor.options(num_cpus=cpus).remote(str(model_dir), data_dir=str(args.data_dir))
                  for _ in range(size)]
        ray.get([actor.evaluate.remote(tasks, limit=2) for actor in actors])  # start-up and warm-up
        startup_s = time.perf_counter() - start
        start = time.perf_counter()
        finish_order = [index for index, _ in evaluate_on_pool(actors, refs, tasks, **kwargs)]
        wall_s = time.perf_counter() - start
        rows.append({"actors": size, "num_cpus_per_actor": cpus, "startup_s": startup_s, "wall_s": wall_s,
                     "candidates_per_s": len(refs) / wall_s, "finish_order": finish_order})
        for actor in actors:
            ray.kill(actor)
    base = rows[0]["candidates_per_s"] / rows[0]["actors"]
    for row in rows:
        row["parallel_efficiency"] = row["candidates_per_s"] / (row["actors"] * base)
    report = {"command": " ".join(sys.argv), "cpus": args.cpus, "tasks": tasks, "limit": args.limit,
              "candidates": len(refs), "model": {"hidden": args.hidden, "layers": args.layers},
              "load_average_before": load_before, "load_average_after": os.getloadavg(), "pools": rows}
    atomic_write_json(args.out, report)
    for row in rows:
        print(f"{row['actors']} actor(s): {row['candidates_per_s']:.3f} candidates/s, "
              f"efficiency {row['parallel_efficiency']:.2f}, start-up {row['startup_s']:.1f} s")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
