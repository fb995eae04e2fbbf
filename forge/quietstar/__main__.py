"""Build and validate the Quiet-STaR reasoning dataset (the spec's Step 0).

Offline (traces from the local data's solutions):
    python -m forge.quietstar --output data/reasoning.jsonl --n 20000 --data-dir ../shared/data
From an OpenAI-compatible service (seeded with the local questions and answers, resumable):
    python -m forge.quietstar --output data/reasoning_api.jsonl --n 25000 --endpoint https://api.openai.com/v1 \\
        --model gpt-4o-mini --price-prompt 0.00015 --price-completion 0.0006 --cost-limit 200

Exit status: 0 written and valid; 1 written but failing validation, or stopped at the cost cap;
2 bad usage or input.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from forge.quietstar.api import ApiError, ApiGeneratorConfig, ApiReasoningGenerator, CostCapReached, seeds_from
from forge.quietstar.data import validate_examples, write_dataset
from forge.quietstar.offline import OFFLINE_SOURCES, OfflineConfig, OfflineReasoningGenerator

# Sources whose answers an API reply can be checked against (code answers cannot be compared as text).
API_SEED_SOURCES = tuple(source for source in OFFLINE_SOURCES if source != "mbpp")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m forge.quietstar", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="JSONL file to write (sidecar: .meta.json)")
    parser.add_argument("--n", type=int, default=20000, help="examples wanted (default 20000)")
    parser.add_argument("--min-examples", type=int, default=None, help="validation minimum (default: --n)")
    parser.add_argument("--data-dir", default=None, help="reference data folder (default: $FORGE_DATA_DIR)")
    parser.add_argument("--seed", type=int, default=0, help="shuffles each dataset's items")
    api = parser.add_argument_group("API generation (all of endpoint, model and both prices)")
    api.add_argument("--endpoint", help="base URL of an OpenAI-compatible API, e.g. https://api.openai.com/v1")
    api.add_argument("--model", help="model name sent with each request")
    api.add_argument("--price-prompt", type=float, help="USD per 1000 prompt tokens")
    api.add_argument("--price-completion", type=float, help="USD per 1000 completion tokens")
    api.add_argument("--cost-limit", type=float, default=200.0, help="hard cap on total USD spent (default 200)")
    api.add_argument("--api-key-env", default="OPENAI_API_KEY", help="variable holding the API key")
    api.add_argument("--max-tokens", type=int, default=512, help="completion tokens per request")
    args = parser.parse_args(argv)
    api_fields = (args.endpoint, args.model, args.price_prompt, args.price_completion)
    if any(value is not None for value in api_fields) and any(value is None for value in api_fields):
        parser.error("API generation needs all of --endpoint, --model, --price-prompt and --price-completion")
    if args.n < 1:
        parser.error(f"--n must be >= 1, got {args.n}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    min_examples = args.min_examples if args.min_examples is not None else args.n
    try:
        if args.endpoint is None:
            generator = OfflineReasoningGenerator(OfflineConfig(data_dir=args.data_dir, seed=args.seed))
            examples = list(generator.generate(args.n))
            write_dataset(examples, args.output, {"rejected": dict(generator.rejected)})
        else:
            seed_generator = OfflineReasoningGenerator(
                OfflineConfig(data_dir=args.data_dir, sources=API_SEED_SOURCES, seed=args.seed))
            config = ApiGeneratorConfig(
                endpoint=args.endpoint, model=args.model, output=args.output,
                price_per_1k_prompt_tokens=args.price_prompt, price_per_1k_completion_tokens=args.price_completion,
                cost_limit_usd=args.cost_limit, api_key_env=args.api_key_env, max_tokens=args.max_tokens)
            generator = ApiReasoningGenerator(config, seeds_from(list(seed_generator.generate(10 ** 9))))
            examples = list(generator.generate(args.n))
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (CostCapReached, ApiError) as err:
        print(f"stopped: {err}", file=sys.stderr)
        return 1
    report = validate_examples(examples, min_examples)
    print(json.dumps({"output": str(args.output), "examples": report.n_examples, "passed": report.passed,
                      "checks": {check.name: check.detail for check in report.checks},
                      "strategy_counts": report.strategy_counts}, indent=2))
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
