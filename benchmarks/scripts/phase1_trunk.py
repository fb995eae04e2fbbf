"""Phase 1 with and without the shared trunk, side by side, from finished runs: wall time, trunk and model
training figures, and every run's models measured on ONE common held-out set with the same behaviour profile
(forge.pretrain.diversity) and the weight-space distance.

    python -m forge.pipeline --phases cognate --out /tmp/runs --set run_name=after ...
    python benchmarks/scripts/phase1_trunk.py --run after=/tmp/runs/after --run before=/tmp/runs/before --json OUT

The common held-out set is the first run's Phase 1 held-out texts: held-out documents are chosen by a
hash of their text (``is_validation_text``, a fixed seed), so no run's models trained on another run's either.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


COMMON_BLOCKS = 128  # sequences of the common held-out set scored per model


def measure(runs: dict[str, Path], threshold: float) -> dict:
    from forge.artifacts import load_model_dir, read_json
    from forge.data.heldout import HELDOUT
    from forge.pipeline import read_run_texts
    from forge.config import load_pipeline_config
    from forge.pretrain.stages import STAGES
    from forge.data.lm_dataset import blocks_from_stream
    from forge.data.sources import load_texts
    from forge.phases.cognate import _encode, _source_config, diversity_report, heldout_blocks_by_dataset
    from forge.pretrain.trainer import evaluate_lm

    first = next(iter(runs.values()))
    config = load_pipeline_config(None, config_file=str(first / "config.json"))
    seq_len = config.cognate.train.seq_len
    texts = read_run_texts(first, HELDOUT, 10**12)
    sources = _source_config(config)
    loaded = {name: load_texts(name, sources) for names in STAGES.values() for name in names}
    out = {"common_heldout": {"run": str(first), "documents": len(texts), "sequences": COMMON_BLOCKS}, "runs": {}}
    for label, run in runs.items():
        manifest = read_json(run / "cognate" / "manifest.json")
        summary = manifest["summary"]
        models = {name: load_model_dir(run / "cognate" / f"model_{name}")[0] for name in summary["models"]}
        tokenizer = load_model_dir(run / "cognate" / f"model_{next(iter(models))}")[1]
        probe = blocks_from_stream(_encode(tokenizer, texts), seq_len)
        common_blocks = probe[:: max(1, len(probe) // COMMON_BLOCKS)][:COMMON_BLOCKS]  # evenly across the set
        report = diversity_report(models, heldout_blocks_by_dataset(tokenizer, texts, loaded, seq_len),
                                  probe[:4], threshold)
        common = {name: evaluate_lm(model, common_blocks, 4, torch.device("cpu"))["val/perplexity"]
                  for name, model in models.items()}
        trunk = summary.get("trunk")
        out["runs"][label] = {
            "phase_wall_time_s": manifest["wall_time_s"],
            "trunk": trunk and {k: trunk.get(k) for k in ("steps", "tokens", "train_wall_time_s", "val/perplexity",
                                                           "reused")},
            "models": {name: {k: m.get(k) for k in ("steps", "tokens", "train_wall_time_s", "val/perplexity")}
                       for name, m in summary["models"].items()},
            "common_heldout_perplexity": common,
            "diversity": {k: report[k] for k in ("behaviour_diversity", "memory_spread", "halting_steps_spread",
                                                 "forward_ms_spread", "weight_space_diversity")},
            "profile_spreads": {g: v["spread"] for g, v in report["profile_spreads"].items()},
            "per_model": report["per_model"],
            "heldout_perplexity_by_dataset": {n: p["heldout_perplexity"] for n, p in report["profiles"].items()},
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True,
                        help="LABEL=RUN_DIR (the first gives the held-out set)")
    parser.add_argument("--threshold", type=float, default=0.3, help="cognate.diversity_threshold")
    parser.add_argument("--json", type=Path, required=True, help="where to write the figures")
    args = parser.parse_args()
    runs = {}
    for item in args.run:
        label, _, path = item.partition("=")
        if not path or not (Path(path) / "cognate" / "manifest.json").is_file():
            parser.error(f"--run {item!r}: give LABEL=RUN_DIR of a run with a finished cognate phase")
        runs[label] = Path(path)
    torch.set_num_threads(1)  # tiny models: more intra-op threads only wait on each other on a busy machine
    result = measure(runs, args.threshold)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(json.dumps({label: {k: r[k] for k in ("phase_wall_time_s", "common_heldout_perplexity", "diversity")}
                      for label, r in result["runs"].items()}, indent=1))


if __name__ == "__main__":
    main()
