"""Command line: merge Hugging Face model directories.

    python -m forge.merge --method ties --models A B C --base BASE --set density=0.5 --out DIR
    python -m forge.merge --list

``--set NAME=VALUE`` values: numbers, true/false, comma lists (``weights=0.2,0.8``; a trailing comma makes
a one-element list: ``weights=1,``), colon pairs (DFS ``path=0:0,1:1``), otherwise strings.
Exit code 2 on usage errors and inputs that cannot be merged.
"""
from __future__ import annotations

import argparse
import inspect
import json
import sys
from typing import Any

from forge.artifacts import ArtifactError
from forge.merge.io import merge_model_dirs
from forge.merge.methods import MERGE_METHODS


def parse_set_value(text: str) -> Any:
    """'0.5' -> 0.5, 'true' -> True, '1,0,2' -> [1, 0, 2], '0:1,2:0' -> [(0, 1), (2, 0)], else the text."""
    if "," in text:
        return [parse_set_value(part) for part in text.split(",") if part]
    if ":" in text:
        return tuple(parse_set_value(part) for part in text.split(":"))
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def parse_sets(items: list[str]) -> dict[str, Any]:
    params = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--set expects NAME=VALUE, got {item!r}")
        params[name.strip()] = parse_set_value(value.strip())
    return params


def describe_methods() -> str:
    lines = []
    for name, spec in sorted(MERGE_METHODS.items()):
        params = ", ".join(n if d is inspect.Parameter.empty else f"{n}={d}" for n, d in spec.parameters.items())
        base = " (needs --base)" if spec.needs_base else ""
        lines.append(f"{name}{base}: {spec.summary}\n    parameters: {params}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m forge.merge", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true", help="list the merge methods and their parameters")
    parser.add_argument("--method", choices=sorted(MERGE_METHODS), help="merge technique")
    parser.add_argument("--models", nargs="+", metavar="DIR", help="model directories to merge, in order")
    parser.add_argument("--base", metavar="DIR", help="base model directory (task arithmetic, TIES, DARE)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="method parameter")
    parser.add_argument("--seed", type=int, default=0, help="seed of random methods (DARE)")
    parser.add_argument("--out", metavar="DIR", help="output model directory (written atomically)")
    args = parser.parse_args(argv)
    if args.list:
        print(describe_methods())
        return 0
    if not (args.method and args.models and args.out):
        parser.error("--method, --models and --out are required (or --list)")
    try:
        params = parse_sets(args.set)
        out = merge_model_dirs(args.method, args.models, args.out, base_dir=args.base, seed=args.seed,
                               params=params)
    except (ValueError, FileNotFoundError, ArtifactError) as err:  # MergeError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(out), "method": args.method, "models": args.models, "base": args.base,
                      "params": params, "seed": args.seed}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
