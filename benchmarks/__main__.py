"""Command line: ``python -m benchmarks --model DIR --tasks arc_easy,gsm8k --limit 200 [--json OUT]``.

Prints a table of per-task metrics and writes them as JSON (metrics, item counts, wall time).
``python -m benchmarks tooluse --model DIR --prompt TEXT --sources easy --limit 20`` runs the Phase 6
tool-use benchmark instead. Exit code 2 on usage errors (unknown task, missing model or data folder).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from forge.data.readers import DATA_DIR_ENV


def _parser() -> argparse.ArgumentParser:
    from benchmarks.tasks import TASKS

    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path,
                        help="a Hugging Face model directory (config.json, weights, tokenizer files)")
    parser.add_argument("--tasks", required=True, help=f"comma-separated, from: {', '.join(sorted(TASKS))}")
    parser.add_argument("--limit", type=int, default=None, help="items per task, drawn with --seed (default all)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help=f"reference data folder (default ${DATA_DIR_ENV}); 'hub' downloads from the hub")
    parser.add_argument("--prompt", default=None, help="system/persona/tool text put before every item")
    parser.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    parser.add_argument("--num-fewshot", type=int, default=None, help="examples per item (default: lm-eval's)")
    parser.add_argument("--seed", type=int, default=1234, help="seed of --limit sampling and few-shot draws")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per forward pass")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="generation budget (default: per task)")
    parser.add_argument("--num-samples", type=int, default=1, help="samples per code problem for pass@k")
    parser.add_argument("--heldout-only", action="store_true", help="only items held out of pretraining")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--cache-dir", type=Path, default=None, help="reuse results of identical runs")
    parser.add_argument("--log-samples", action="store_true", help="keep per-item records in the JSON")
    return parser


def _load(model_dir: Path, device: str):
    from forge.artifacts import MANIFEST, load_model_dir

    # Directories written by the pipeline carry a manifest and are verified; plain HF ones are not.
    return load_model_dir(model_dir, device=device, verify=(model_dir / MANIFEST).is_file())


def _tooluse_parser() -> argparse.ArgumentParser:
    from benchmarks.tooluse import INITIAL_TOOL_PROMPT, SOURCES, ToolUseConfig

    defaults = ToolUseConfig()
    parser = argparse.ArgumentParser(prog="python -m benchmarks tooluse",
                                     description="Tool-use benchmark (Phase 6 A-cycle) of one prompt on a model")
    parser.add_argument("--model", required=True, type=Path, help="a Hugging Face model directory")
    parser.add_argument("--prompt", default=INITIAL_TOOL_PROMPT,
                        help="the tool prompt under test ('' for none; default: the spec's initial tool prompt)")
    parser.add_argument("--sources", default="easy", help=f"comma-separated, from: {', '.join(SOURCES)}")
    parser.add_argument("--limit", type=int, default=None, help="problems per source, drawn with --seed (default all)")
    parser.add_argument("--train-side", action="store_true",
                        help="draw problems from the train side (default: the held-out side)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help=f"reference data folder for svamp, gsm8k, mbpp (default ${DATA_DIR_ENV})")
    parser.add_argument("--max-turns", type=int, default=defaults.max_turns, help="model turns per problem")
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens, help="tokens per model turn")
    parser.add_argument("--num-fewshot", type=int, default=defaults.num_fewshot, help="worked examples per problem")
    parser.add_argument("--num-samples", type=int, default=defaults.num_samples,
                        help="sampled runs per problem for pass@k (0: greedy only)")
    parser.add_argument("--temperature", type=float, default=defaults.temperature, help="of the sampled runs")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="problem draws, few-shot draws, sampling")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="sequences per generation batch")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--cache-dir", type=Path, default=None, help="reuse results of identical runs")
    parser.add_argument("--json", type=Path, default=None, help="write the result (with per-item records) here")
    return parser


def tooluse_main(argv: list[str]) -> int:
    """``python -m benchmarks tooluse ...``: metrics of one prompt, optionally written as JSON."""
    parser = _tooluse_parser()
    args = parser.parse_args(argv)
    from benchmarks.cache import ResultCache
    from benchmarks.tooluse import SOURCES, ToolUseConfig, evaluate_tool_use, load_problems

    sources = [name.strip() for name in args.sources.split(",") if name.strip()]
    unknown = [name for name in sources if name not in SOURCES]
    if not sources or unknown:
        parser.error(f"unknown source(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(SOURCES)}")
    if not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model} is not a model directory (no config.json): pass the folder a "
                     "phase wrote or any save_pretrained output")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be a positive number of problems")
    data_dir = str(args.data_dir) if args.data_dir is not None else (os.environ.get(DATA_DIR_ENV) or None)
    if any(source != "easy" for source in sources) and (data_dir is None or not Path(data_dir).is_dir()):
        parser.error(f"sources other than 'easy' read the reference data: pass --data-dir DIR or set "
                     f"{DATA_DIR_ENV} (got {data_dir})")
    try:
        config = ToolUseConfig(max_turns=args.max_turns, max_new_tokens=args.max_new_tokens,
                               num_fewshot=args.num_fewshot, num_samples=args.num_samples,
                               temperature=args.temperature, seed=args.seed, batch_size=args.batch_size)
    except ValueError as error:
        parser.error(str(error))

    start = time.perf_counter()
    model, tokenizer = _load(args.model, args.device)
    problems = load_problems(sources, heldout=not args.train_side, limit=args.limit, seed=args.seed,
                             data_dir=data_dir)
    result = evaluate_tool_use(model, tokenizer, prompt=args.prompt, problems=problems, config=config,
                               data_dir=data_dir, cache=ResultCache(args.cache_dir) if args.cache_dir else None)
    wall_s = time.perf_counter() - start
    print(f"tooluse: {result.n_items} problems from {', '.join(sources)}{'  (cached)' if result.cached else ''}")
    for name, value in result.metrics.items():
        print(f"  {name:<24} {value:.4f}")
    print(f"total wall time {wall_s:.2f} s")
    if args.json is not None:
        from forge.artifacts import atomic_write_json

        atomic_write_json(args.json, {
            "model": str(args.model.resolve()), "sources": sources, "result": result.to_dict(), "wall_s": wall_s,
            "settings": {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()},
        })
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["tooluse"]:
        return tooluse_main(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    from benchmarks.harness import TASK_WEIGHTS, aggregate_score, evaluate
    from benchmarks.cache import ResultCache
    from benchmarks.tasks import HUB, TASKS

    tasks = [name.strip() for name in args.tasks.split(",") if name.strip()]
    unknown = [name for name in tasks if name not in TASKS]
    if not tasks or unknown:
        parser.error(f"unknown task(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(sorted(TASKS))}")
    if not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model} is not a model directory (no config.json): pass the folder a "
                     "phase wrote or any save_pretrained output")
    data_dir = str(args.data_dir) if args.data_dir is not None else os.environ.get(DATA_DIR_ENV)
    if data_dir is None:
        parser.error(f"no data folder: pass --data-dir DIR or set {DATA_DIR_ENV} (e.g. ../shared/data), "
                     "or --data-dir hub to download the datasets")
    if data_dir != HUB and not Path(data_dir).is_dir():
        parser.error(f"data folder {data_dir} does not exist: fix --data-dir or {DATA_DIR_ENV}")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be a positive number of items")

    start = time.perf_counter()
    model, tokenizer = _load(args.model, args.device)
    load_s = time.perf_counter() - start
    results = evaluate(model, tokenizer, tasks, limit=args.limit, seed=args.seed, num_fewshot=args.num_fewshot,
                       prompt=args.prompt, heldout_only=args.heldout_only, batch_size=args.batch_size,
                       data_dir=data_dir, max_new_tokens=args.max_new_tokens, num_samples=args.num_samples,
                       cache=ResultCache(args.cache_dir) if args.cache_dir else None, log_samples=args.log_samples)
    wall_s = time.perf_counter() - start

    print(f"{'task':<15} {'items':>6} {'wall s':>8}  metrics")
    for name, result in results.items():
        # Per-group metrics ("acc/<subject>") go to the JSON only.
        metrics = "  ".join(f"{key}={value:.4f}" for key, value in result.metrics.items() if "/" not in key)
        print(f"{name:<15} {result.n_items:>6} {result.wall_s:>8.2f}  {metrics}{'  (cached)' if result.cached else ''}")
    aggregate = aggregate_score(results) if all(name in results for name in TASK_WEIGHTS) else None
    if aggregate is not None:
        print(f"aggregate (Phase 6 weights): {aggregate:.4f}")
    print(f"total wall time {wall_s:.2f} s (model load {load_s:.2f} s)")
    if args.json is not None:
        from forge.artifacts import atomic_write_json

        atomic_write_json(args.json, {
            "model": str(args.model.resolve()), "tasks": {name: r.to_dict() for name, r in results.items()},
            "aggregate": aggregate, "wall_s": wall_s, "load_s": load_s,
            "settings": {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()},
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
