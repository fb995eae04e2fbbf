"""Why Quiet-STaR Step 2 rolls back: its first anti-theater check on the Step 1 model, as the phase runs it
(``forge.quietstar.rl.anti_theater_check`` on the run's held-out check items), with a fresh mixing head at several
starting weights on the thought-conditioned prediction: the phase's own (``quietstar.rl.mixing_init_weight``,
0.05) and ones that trust the thought more, up to the thought-conditioned prediction alone. JSON out.

    python benchmarks/scripts/quietstar_check_probe.py --run-dir /tmp/run10/tiny --weights 0.05 0.5 0.999 \\
        --check-items 8 32 --json benchmarks/results/quietstar_check_probe.json
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import forge  # noqa: E402,F401  (registers the Cognate architecture)
from forge.artifacts import atomic_write_json, load_model_dir  # noqa: E402
from forge.config import load_pipeline_config  # noqa: E402
from forge.phases.base import PhaseContext  # noqa: E402
from forge.phases.quietstar import eval_set, heldout_problems, step2_texts  # noqa: E402
from forge.quietstar.rewards import MixingHead  # noqa: E402
from forge.quietstar.rl import ThinkIds, anti_theater_check, heldout_check_items  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", required=True, type=Path, help="a run directory (RUN/tiny) after Phase 3")
    parser.add_argument("--weights", nargs="+", type=float, default=[0.05, 0.5, 0.999],
                        help="the mixing head's starting weights on the thought-conditioned prediction")
    parser.add_argument("--check-items", nargs="+", type=int, default=None,
                        help="held-out items per check (default: the run's quietstar.rl.check_items)")
    parser.add_argument("--json", required=True, help="where to write the figures")
    args = parser.parse_args(argv)
    config = load_pipeline_config(config_file=str(args.run_dir / "config.json"))
    ctx = PhaseContext(config=config, run_dir=args.run_dir, phase_dir=args.run_dir / "quietstar", inputs={})
    problems = heldout_problems(ctx)
    heldout = step2_texts(problems[eval_set(problems)])
    model, tokenizer = load_model_dir(args.run_dir / "quietstar" / "work" / "step1_model", device="cpu")
    model.eval()
    think = ThinkIds.of(tokenizer)
    rows = []
    for items in args.check_items or [config.quietstar.rl.check_items]:
        rl = dataclasses.replace(config.quietstar.rl, check_items=items)
        check_items = heldout_check_items(tokenizer, heldout, rl)
        for weight in args.weights:
            torch.manual_seed(rl.seed)
            head = MixingHead(model.get_output_embeddings().weight.shape[1], init_weight=weight)
            report = anti_theater_check(model, head, model, check_items, think, rl,
                                        torch.Generator().manual_seed(rl.seed))
            rows.append({"check_items": items, "mixing_weight": weight, "passed": report.all_passed,
                         **{r.name: {"value": r.value, "threshold": r.threshold, "passed": r.passed,
                                     "detail": r.detail}
                            for r in (report.divergence, report.ablation, report.correlation)}})
            print({k: (v["value"] if isinstance(v, dict) else v) for k, v in rows[-1].items()}, flush=True)
    atomic_write_json(Path(args.json), {"command": " ".join(["quietstar_check_probe.py", *(argv or sys.argv[1:])]),
                                        "model": str(args.run_dir / "quietstar" / "work" / "step1_model"),
                                        "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
