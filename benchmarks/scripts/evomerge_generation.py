"""One EvoMerge generation's wall time with 1 and 2 evaluation trials at a time, and where the time goes.

    python -m forge.pipeline --phases cognate --out runs            # once: the three parents
    python benchmarks/scripts/evomerge_generation.py --run-dir runs/tiny \
        --out benchmarks/results/evomerge_generation.json

The generation is generation 0 (the 8 combos of the run's Cognate models), built once by the driver;
each setting evaluates it as its own Tune experiment (fresh trial actors, reused within the experiment)
with ``eval_actors`` trials at a time on an equal CPU share. Recorded per setting: wall time of the
Tune experiment, and summed over candidates: merge (driver), put (driver: weights into the object store),
transfer (trial: fetch the weights and load them into the resident model) and evaluation (trial: held-out
perplexity, accuracy with --data-dir, tokens/s). Parallel efficiency = wall(1) / (2 * wall(2)).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="a run directory with a finished cognate phase")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "evomerge_generation.json")
    parser.add_argument("--actors", default="1,2", help="evaluation trials at a time, comma-separated")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs given to the local Ray")
    parser.add_argument("--data-dir", default=os.environ.get("FORGE_DATA_DIR"),
                        help="reference data folder: adds the accuracy term (default $FORGE_DATA_DIR)")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("WANDB_MODE", "disabled")

    from forge.pipeline import finished_outputs

    from forge.artifacts import verify_model_dir

    cognate_dir = args.run_dir / "cognate"
    # A finished cognate phase, or (for a quick measurement) verified model_* directories placed there.
    parents_dirs = finished_outputs(cognate_dir) or {
        p.name: p for p in sorted(cognate_dir.glob("model_*")) if verify_model_dir(p)}
    if len(parents_dirs) < 2:
        parser.error(f"{cognate_dir} holds no finished cognate phase; run "
                     f"`python -m forge.pipeline --phases cognate --out {args.run_dir.parent}` first")

    import ray
    import torch

    from forge.artifacts import atomic_write_json, load_model_dir
    from forge.merge.evolve import EvoMergeConfig, initial_population
    from forge.merge import infer_layer_layout
    from forge.data.heldout import HELDOUT
    from forge.pipeline import read_run_texts
    from forge.phases.evomerge import PROBE_TOKENS, build_candidate, evaluate_candidates, heldout_token_ids

    config = EvoMergeConfig()
    loaded = [load_model_dir(path) for path in parents_dirs.values()]
    template, tokenizer = loaded[0]
    parents = [model.state_dict() for model, _ in loaded]
    texts = read_run_texts(args.run_dir, HELDOUT, config.heldout_max_chars)
    probe = heldout_token_ids(tokenizer, texts, PROBE_TOKENS)
    genomes = initial_population(len(parents), infer_layer_layout(parents[0].keys()).num_layers, seed=0)
    candidates = [build_candidate(f"g0_combo{i}", g, parents, template, probe) for i, g in enumerate(genomes)]

    ray.init(address="local", num_cpus=args.cpus, num_gpus=0, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    rows = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as storage:
        for n in (int(k) for k in args.actors.split(",")):
            evaluation = evaluate_candidates(candidates, template, tokenizer, texts, config, storage=Path(storage),
                                             name=f"actors_{n}", data_dir=args.data_dir, device="cpu",
                                             eval_actors=n)
            timings = evaluation.timings
            busy = timings["transfer_s"] + timings["eval_s"]
            rows.append({**timings,
                         "generation_wall_s": timings["merge_s"] + timings["put_s"] + timings["wall_s"],
                         "tune_overhead_s": timings["wall_s"] - busy / n,
                         "perplexity": [t["perplexity"] for t in evaluation.terms],
                         "tokens_per_s": [t["tokens_per_s"] for t in evaluation.terms]})
            print(f"eval_actors={n}: Tune experiment {timings['wall_s']:.1f} s (merge {timings['merge_s']:.2f} s, "
                  f"put {timings['put_s']:.2f} s, transfer {timings['transfer_s']:.2f} s, "
                  f"evaluation {timings['eval_s']:.1f} s summed over {len(candidates)} candidates)", flush=True)
    ray.shutdown()
    by_n = {row["eval_actors"]: row for row in rows}
    result = {
        "command": " ".join([sys.executable, *sys.argv]),
        "run_dir": str(args.run_dir),
        "parents": {name: str(path) for name, path in parents_dirs.items()},
        "num_parameters": sum(p.numel() for p in template.parameters()),
        "candidates": len(candidates),
        "accuracy_term": args.data_dir is not None,
        "settings": rows,
        "machine": {"cpus": os.cpu_count(), "ray_cpus": args.cpus, "platform": platform.platform(),
                    "torch": torch.__version__, "load_average_before": load_before,
                    "load_average_after": os.getloadavg(), "time_unix": time.time()},
    }
    if 1 in by_n and 2 in by_n:
        result["speedup_2_vs_1"] = by_n[1]["wall_s"] / by_n[2]["wall_s"]
        result["parallel_efficiency_2"] = result["speedup_2_vs_1"] / 2
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
