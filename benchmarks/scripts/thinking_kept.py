"""Whether later phases keep what Phase 3 taught: each model's accuracy on Phase 3's held-out problems with its
thinking allowed, the share of its answers that open a thinking block, and its accuracy with the thoughts removed
(thinking tokens forbidden), measured as Phase 3 measures them (``forge.phases.quietstar.measure``, the run's own
held-out set and settings). JSON out.

    python benchmarks/scripts/thinking_kept.py --run-dir /tmp/run10/tiny quietstar/model bitnet/model \\
        --json benchmarks/results/thinking_kept.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import forge  # noqa: E402,F401  (registers the Cognate architecture)
from forge.artifacts import atomic_write_json, load_model_dir, read_manifest  # noqa: E402
from forge.config import load_pipeline_config  # noqa: E402
from forge.phases.base import PhaseContext  # noqa: E402
from forge.phases.quietstar import eval_set, heldout_problems, measure  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", required=True, type=Path, help="a run directory (RUN/tiny) with config.json")
    parser.add_argument("models", nargs="+", help="model directories, relative to --run-dir or absolute")
    parser.add_argument("--json", required=True, help="where to write the figures")
    args = parser.parse_args(argv)
    config = load_pipeline_config(config_file=str(args.run_dir / "config.json"))
    ctx = PhaseContext(config=config, run_dir=args.run_dir, phase_dir=args.run_dir / "quietstar", inputs={})
    problems = heldout_problems(ctx)
    name = eval_set(problems)
    problems = {name: problems[name]}
    rows = []
    for model_dir in args.models:
        path = args.run_dir / model_dir
        started = time.perf_counter()
        model, tokenizer = load_model_dir(path, device="cpu")
        figures = measure(model, tokenizer, problems, config.quietstar, allow_thinking=True)
        rows.append({"model": str(path), "weights_sha256": read_manifest(path)["weights_sha256"],
                     "accuracy_with_thinking": figures[f"{name}_accuracy"],
                     "thinking_usage": figures[f"{name}_thinking_usage"],
                     "accuracy_thoughts_removed": figures[f"{name}_accuracy_no_thinking"],
                     "seconds": round(time.perf_counter() - started, 1)})
        print(rows[-1], flush=True)
    atomic_write_json(Path(args.json), {"command": " ".join(["thinking_kept.py", *(argv or sys.argv[1:])]),
                                        "eval_set": name, "problems": len(problems[name]), "models": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
