"""The tiny Cognate training step in the driver and in a Ray actor, at Ray's default worker niceness and at the
pipeline's (``cluster.runtime.connect`` starts a local Ray with ``RAY_worker_niceness=0``).

Each setting starts its own local Ray (``num_cpus`` = the machine's) in a fresh process, then times
``cognate_throughput.train`` (AdamW, random token batches, the tiny preset's shape) in the driver and four times
in one actor with the same CPU share and torch threads. JSON out.

    python benchmarks/scripts/actor_niceness.py --niceness 15 0 15 0 --json benchmarks/results/actor_niceness.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
THROUGHPUT_ARGS = ["--hidden", "128", "--layers", "2", "--heads", "4", "--vocab", "4096", "--seq-len", "128",
                   "--batch", "8", "--window", "64", "--ltm-slots", "64", "--memory-dim", "16", "--memory-chunk",
                   "32", "--act-max-steps", "2", "--trm-refinements", "2", "--steps", "20", "--warmup", "2"]


def tokens_per_s(threads: int) -> float:
    """One timed run of the tiny Cognate training step in this process."""
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks" / "scripts"))
    import cognate_throughput as throughput
    from forge.models import CognateForCausalLM

    args = throughput.parse_args([*THROUGHPUT_ARGS, "--threads", str(threads)])
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    batches = [torch.randint(0, args.vocab, (args.batch, args.seq_len), generator=generator)
               for _ in range(args.warmup + args.steps)]
    model = CognateForCausalLM(throughput.cognate_config(args))
    return throughput.train(model, batches, args.warmup)["tokens_per_s"]


def one_setting(niceness: int, threads: int) -> dict:
    """Run in a fresh process whose environment carries the niceness to the raylet it starts."""
    import ray

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)

    @ray.remote(num_cpus=os.cpu_count())
    class Trainer:
        def niceness(self) -> int:
            return os.nice(0)

        def tokens_per_s(self) -> float:
            return tokens_per_s(threads)

    actor = Trainer.remote()
    row = {"worker_niceness": niceness, "actor_nice": ray.get(actor.niceness.remote()), "threads": threads,
           "driver_tokens_per_s": tokens_per_s(threads),
           "actor_tokens_per_s": [ray.get(actor.tokens_per_s.remote()) for _ in range(4)]}
    ray.shutdown()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--niceness", type=int, nargs="+", default=[15, 0], help="RAY_worker_niceness values")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in the driver and the actor")
    parser.add_argument("--json", type=Path, required=True, help="where to write the figures")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: one setting, in this process
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(one_setting(args.one, args.threads)))
        return 0
    rows = []
    for niceness in args.niceness:
        env = {**os.environ, "RAY_worker_niceness": str(niceness), "PYTHONPATH": str(ROOT)}
        done = subprocess.run([sys.executable, __file__, "--one", str(niceness), "--threads", str(args.threads),
                               "--json", str(args.json)], env=env, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    from forge.artifacts import atomic_write_json

    atomic_write_json(args.json, {"command": " ".join(["actor_niceness.py", *(argv or sys.argv[1:])]),
                                  "cpus": os.cpu_count(), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
