"""Half-bakes that mean half: stacked target-strength half-bakes against the spec's S_N = 1 - 0.5^N.

    python benchmarks/scripts/halfbake_stacking.py --out benchmarks/results/halfbake_stacking.json

The model is the one of ``bake_behaviour.py``: a tiny GPT-2 (or Llama, Cognate) pretrained inside the script
on documents where the header ``style: pirate`` turns answers ``X.`` into ``arr, X matey!``, so the prompt
changes the model's predictions (its KL per token is reported beside every strength). The same prompt is
then half-baked ``--rounds`` times (``forge.baking.stack_bakes``, target mode, target 0.5: each bake closes
half of the KL gap left before it, the LoRA update scaled on calibration inputs), and each round's strength
is measured on held-out inputs against the ORIGINAL model. For comparison the script also runs one full
bake (target mode) and one epochs-mode half-bake (1.5 of 3 epochs, the old meaning of "half").
"""
from __future__ import annotations

import argparse
import copy
import random
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bake_behaviour import PROMPT, behaviour, build_models, document, pretrain, questions  # noqa: E402

from forge.artifacts import atomic_write_json  # noqa: E402
from forge.baking import BakingConfig, bake_prompt, stack_bakes  # noqa: E402
from forge.configtools import apply_override, from_dict, parse_override  # noqa: E402
from forge.data.tokenizer import train_bpe_tokenizer  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/halfbake_stacking.json")
    parser.add_argument("--model", default="gpt2", choices=("gpt2", "llama", "cognate"))
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--pretrain-batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4, help="stacked half-bakes")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="BakingConfig overrides for every bake (repeatable); default: the spec's LoRA r 16, "
                             "lr 5e-4, 3 epochs, target mode")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.pretrain_steps < 1:
        parser.error("--rounds and --pretrain-steps must be >= 1")
    torch.set_num_threads(1)
    started = time.perf_counter()

    rng = random.Random(0)
    tokenizer = train_bpe_tokenizer([document(rng) for _ in range(2000)], vocab_size=400)
    items = questions()
    random.Random(1).shuffle(items)
    check_items, bake_items = items[:12], items[12:]  # behaviour is checked on questions no bake saw
    inputs = [q for q, _ in bake_items]
    overrides: dict = {"max_new_tokens": 16}
    for text in args.overrides:
        apply_override(overrides, *parse_override(text))
    config = from_dict(BakingConfig, overrides)
    if config.mode != "target_strength":
        parser.error("this benchmark measures target-strength half-bakes; do not set mode=epochs")

    model = build_models(tokenizer, args.model)
    losses = pretrain(model, tokenizer, args.pretrain_steps, seed=2, batch=args.pretrain_batch)
    results = {
        "model": args.model, "parameters": sum(p.numel() for p in model.parameters()), "prompt": PROMPT,
        "pretrain_steps": args.pretrain_steps, "pretrain_batch": args.pretrain_batch,
        "pretrain_final_loss": sum(losses[-20:]) / min(20, len(losses)), "bake_inputs": len(inputs),
        "overrides": args.overrides, "config": asdict(config),
        "behaviour_base_unprompted": behaviour(model, tokenizer, check_items, ""),
        "behaviour_base_prompted": behaviour(model, tokenizer, check_items, PROMPT),
    }

    half = config.at_strength("half")
    stacked, rows = stack_bakes(copy.deepcopy(model), tokenizer, PROMPT, inputs, half, rounds=args.rounds)
    results["stacking"] = rows
    results["prompt_kl_per_token"] = rows[0]["kl_reference"]  # held-out KL(original + prompt || original)
    results["stacking_all_within_tolerance"] = all(row["within_tolerance"] for row in rows)
    results["behaviour_stacked_unprompted"] = behaviour(stacked, tokenizer, check_items, "")

    full = bake_prompt(copy.deepcopy(model), tokenizer, PROMPT, inputs, config.at_strength("full"))
    epochs_half = bake_prompt(copy.deepcopy(model), tokenizer, PROMPT, inputs,
                              replace(config, mode="epochs").at_strength("half"))
    for name, result in (("full_bake", full), ("epochs_mode_half_bake", epochs_half)):
        results[name] = {key: value for key, value in result.report().items()
                         if key in ("strength", "gap_closed", "target_reached", "lora_scale", "kl_reference",
                                    "kl_after", "history", "wall_time_s")}
    results["wall_s"] = time.perf_counter() - started
    results["command"] = "python benchmarks/scripts/halfbake_stacking.py " + " ".join(argv or sys.argv[1:])
    atomic_write_json(Path(args.out), results)

    print(f"prompt KL per token {results['prompt_kl_per_token']:.3f}; tolerance +/- {config.strength_tolerance}")
    print("N  target  measured  within  lora_scale")
    for row in rows:
        print(f"{row['round']}  {row['target']:.4f}  {row['measured_strength']:.4f}    {row['within_tolerance']!s:5}  "
              f"{row['lora_scale']:.3f}")
    print(f"full bake {full.strength:.4f} (reached: {full.target_reached}); epochs-mode half-bake "
          f"{epochs_half.strength:.4f}; {results['wall_s']:.0f} s; written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
