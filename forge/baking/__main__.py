"""Bake a prompt into a model: ``python -m forge.baking --model DIR --prompt TEXT --out DIR``.

Writes the baked model (a plain model directory, or with ``--save adapter`` the LoRA adapter) and a
JSON report with the held-out KL before and after and the measured strength.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from forge.artifacts import ArtifactError, atomic_write_json, load_model_dir
from forge.baking import BakingConfig, BakingError, bake_prompt, export_merged, load_inputs, save_adapter
from forge.configtools import ConfigError, apply_override, from_dict, load_yaml, parse_override


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m forge.baking", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="model directory to bake into (with manifest.json)")
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="the prompt text to bake in; it is placed directly before each input, "
                                         "so end it with a space or newline")
    prompt.add_argument("--prompt-file", help="a file holding the prompt text")
    parser.add_argument("--inputs", help="inputs that follow the prompt: .txt (one per line), .jsonl or .json; "
                                         "default: trajectories from the prompt alone")
    parser.add_argument("--input-field", help="field of a JSON record holding the input (default: question, "
                                              "problem, prompt, input, text, ...)")
    parser.add_argument("--limit", type=int, help="use only the first N inputs")
    parser.add_argument("--strength", default="full",
                        help="full | half | a number in (0, 1]: the target strength (share of the held-out KL "
                             "gap the bake closes), or with --set mode=epochs the fraction of the full schedule "
                             "to run (the strength reached is measured and reported)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--save", choices=("merged", "adapter"), default="merged",
                        help="merged: a plain model directory (merge_and_unload); adapter: the LoRA adapter")
    parser.add_argument("--report", help="JSON report path (default: OUT.bake_report.json next to OUT)")
    parser.add_argument("--config", help="YAML file of BakingConfig fields")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a BakingConfig field, e.g. --set max_new_tokens=64 (repeatable)")
    parser.add_argument("--allow-unverified", action="store_true",
                        help="accept a model directory without a valid manifest (e.g. a plain HF save)")
    return parser


def resolve_config(args: argparse.Namespace) -> BakingConfig:
    data = load_yaml(args.config) if args.config else {}
    for text in args.overrides:
        path, value = parse_override(text)
        apply_override(data, path, value)
    return from_dict(BakingConfig, data).at_strength(args.strength)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        config = resolve_config(args)
        prompt = Path(args.prompt_file).read_text(encoding="utf-8") if args.prompt_file else args.prompt
        inputs = load_inputs(args.inputs, field=args.input_field, limit=args.limit) if args.inputs else None
        model, tokenizer = load_model_dir(Path(args.model), verify=not args.allow_unverified)
    except (ConfigError, ValueError, FileNotFoundError, ArtifactError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    report_path = Path(args.report) if args.report else out.with_name(out.name + ".bake_report.json")
    try:
        result = bake_prompt(model, tokenizer, prompt, inputs, config)
    except ValueError as err:  # the prompt/inputs do not fit the model
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BakingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    report = {**result.report(), "model": str(args.model), "saved": args.save, "output": str(out)}
    if args.save == "adapter":
        save_adapter(result, out, tokenizer)
    else:
        export_merged(result, tokenizer, out)
    atomic_write_json(report_path, report)
    print(f"[forge.baking] KL {result.kl_before:.4f} -> {result.kl_after:.4f}, {result.describe_strength()}; "
          f"{args.save} written to {out}, report {report_path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
