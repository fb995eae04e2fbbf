"""Wall time of one Phase 6 iteration's evaluation (4 prompt variants) on 4 BenchmarkActors against 1.

    python benchmarks/scripts/prompt_iteration.py --model runs/tiny/curriculum/model \
        --json benchmarks/results/prompt_iteration.json [--data-dir ../shared/data]

The work is exactly Phase 6's (tiny preset settings, ``forge.config.ToolPersonaPhaseConfig``): the
A-cycle scores the 4 mutations of the spec's initial tool prompt that its first iteration proposes on
the first rotating subset of held-out tool problems; the B-cycle scores 4 human-written personas on the
persona fitness tasks (the spec's six with a data folder, else ``synthetic_reasoning``). Each pool size
gets fresh actors with Phase 6's resource share (``cluster.resources.evaluation_share``); their start-up
and a one-item warm-up are timed apart from the measured ``actors.benchmark_actor.evaluate_prompts`` call.
The scores of both pool sizes are recorded too: they must agree, since the same prompts meet the same
weights.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="a model directory (e.g. Phase 5's output)")
    parser.add_argument("--json", type=Path, required=True, help="where to write the report")
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("FORGE_DATA_DIR"),
                        help="reference data (default: $FORGE_DATA_DIR; none: the offline sources and tasks)")
    parser.add_argument("--pools", default="1,4", help="actor pool sizes to measure")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs given to Ray")
    args = parser.parse_args(argv)
    if not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model} is not a model directory (no config.json): pass a phase's model/ folder")

    import ray

    from actors.benchmark_actor import BenchmarkActor, evaluate_prompts
    from benchmarks.harness import TASK_WEIGHTS, aggregate_score
    from benchmarks.tooluse import INITIAL_TOOL_PROMPT, ToolUseConfig
    from benchmarks.tooluse_problems import load_problems, rotation_subset
    from cluster.resources import evaluation_share
    from forge.artifacts import atomic_write_json, load_model_dir
    from forge.config import PipelineConfig
    from forge.phases.tool_persona import OFFLINE_PERSONA_TASKS, tool_fitness
    from forge.abcycles.prompt_variants import HUMAN_PERSONAS, mutate_prompt

    pipeline = PipelineConfig()  # the embedded tiny preset
    config, seed = pipeline.tool_persona, pipeline.seed
    data_dir = str(args.data_dir) if args.data_dir else None
    heldout = load_problems(config.sources(data_dir is not None), heldout=True, data_dir=data_dir, seed=seed)
    problems = rotation_subset(heldout[config.validation_items:], 1, config.tool_items, seed=seed)
    tool_config = ToolUseConfig(max_turns=config.tool_max_turns, max_new_tokens=config.tool_max_new_tokens,
                                num_fewshot=config.tool_fewshot, num_samples=0)
    persona_tasks = dict(TASK_WEIGHTS) if data_dir else dict(OFFLINE_PERSONA_TASKS)
    work = {
        "A": ([p.prompt for p in mutate_prompt(INITIAL_TOOL_PROMPT, 4, seed + 1)],
              {"method": "evaluate_tool_use", "problems": problems, "config": tool_config, "data_dir": data_dir}),
        "B": (list(HUMAN_PERSONAS[:4]),
              {"method": "evaluate", "tasks": list(persona_tasks), "limit": config.persona_items, "seed": 1001,
               "heldout_only": True, "max_new_tokens": config.persona_max_new_tokens}),
    }
    state_dict = load_model_dir(args.model)[0].state_dict()

    ray.init(address="local", num_cpus=args.cpus, num_gpus=0, include_dashboard=False, log_to_driver=False)
    rows = []
    load_before = os.getloadavg()
    for size in (int(k) for k in args.pools.split(",")):
        share = evaluation_share(state_dict, "cpu", size)
        start = time.perf_counter()
        actors = [BenchmarkActor.options(**share.ray_options()).remote(str(args.model), device=share.device,
                                                                       data_dir=data_dir) for _ in range(size)]
        ray.get([actor.evaluate_tool_use.remote("", problems[:1], config=tool_config, data_dir=data_dir)
                 for actor in actors])  # start-up and warm-up
        row = {"actors": size, "share": share.ray_options(), "startup_s": time.perf_counter() - start}
        for cycle, (prompts, kwargs) in work.items():
            start = time.perf_counter()
            results = evaluate_prompts(actors, prompts, **kwargs)
            row[cycle] = {"wall_s": time.perf_counter() - start,
                          "scores": [tool_fitness(r["metrics"], config.tool_metric_weights) if cycle == "A"
                                     else aggregate_score(r, persona_tasks) for r in results]}
        rows.append(row)
        for actor in actors:
            ray.kill(actor)
        print(f"{size} actor(s): A {row['A']['wall_s']:.1f} s, B {row['B']['wall_s']:.1f} s "
              f"(start-up {row['startup_s']:.1f} s)", flush=True)
    ray.shutdown()
    for row in rows[1:]:
        for cycle in work:
            row[cycle]["speedup_vs_first_pool"] = rows[0][cycle]["wall_s"] / row[cycle]["wall_s"]
    report = {"command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
              "model": str(args.model), "data_dir": data_dir, "cpus": args.cpus,
              "tool_problems": len(problems), "tool_sources": config.sources(data_dir is not None),
              "persona_tasks": persona_tasks, "prompts": {cycle: prompts for cycle, (prompts, _) in work.items()},
              "load_average_before": load_before, "load_average_after": os.getloadavg(), "pools": rows}
    atomic_write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
