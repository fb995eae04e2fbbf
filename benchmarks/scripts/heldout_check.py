"""Long-context health and held-out perplexity of a run's Cognate models, as JSON.

    python benchmarks/scripts/heldout_check.py --run-dir runs/tiny --out heldout_check.json

For each model in ``<run>/cognate``: how many of up to 40 consecutive windows of the held-out text give
non-finite logits at each window length (the models train on 128-token sequences), and the sliding-window
perplexity (128-token windows) on the held-out text that later phases read (``read_run_texts``, 20k
characters drawn evenly across the file) and on all of it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="a run directory with a finished cognate phase")
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON")
    parser.add_argument("--lengths", default="128,192,256,384,512", help="window lengths to check")
    parser.add_argument("--windows", type=int, default=40, help="windows per length")
    args = parser.parse_args()

    import torch

    from benchmarks.lm import perplexity
    from forge.artifacts import load_model_dir
    from forge.data.heldout import HELDOUT
    from forge.pipeline import finished_outputs, read_run_texts

    torch.set_num_threads(2)
    cognate = args.run_dir / "cognate"
    models = finished_outputs(cognate)
    if models is None:
        print(f"error: {cognate} holds no finished cognate phase", file=sys.stderr)
        return 2

    all_texts = read_run_texts(args.run_dir, HELDOUT, 10**12)
    sampled = read_run_texts(args.run_dir, HELDOUT, 20_000)
    result = {"command": " ".join(sys.argv), "run_dir": str(args.run_dir), "models": {}}
    for name, path in models.items():
        model, tokenizer = load_model_dir(path)
        ids = torch.tensor(tokenizer("\n\n".join(all_texts), add_special_tokens=False)["input_ids"])
        bad = {}
        for length in (int(x) for x in args.lengths.split(",")):
            starts = range(0, min(len(ids) - length, args.windows * length), length)
            with torch.no_grad():
                bad[length] = sum(int(not torch.isfinite(model(input_ids=ids[s:s + length][None]).logits).all())
                                  for s in starts)
        result["models"][name] = {
            "nonfinite_windows": bad, "windows_per_length": args.windows,
            "perplexity_sampled_20k": perplexity(model, tokenizer, sampled, max_length=128),
            "perplexity_all_heldout": perplexity(model, tokenizer, all_texts, max_length=128),
        }
        print(name, json.dumps(result["models"][name]), flush=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
