"""Phase 2, EvoMerge: the Cognate models merged into one champion by evolution, driven by Ray Tune.

Driver: load the parents, build each generation's candidates from their genomes (``forge.merge.evolve``),
replace an invalid merge (non-finite weights or logits, broken greedy generation) by a linear merge and
record it, put the weights in the object store once, and run one Tune experiment per generation: each
trial is one candidate genome, evaluated (held-out perplexity, held-out accuracy: the task world's without data,
tokens/s, size) inside the trial on the resource share ``cluster.resources`` gives it, ``eval_actors``
trials at a time. The experiment directory (``work/tune/gen_NNN``) holds every trial's genome and measured
terms; ``work/generations/gen_NNN.json`` is the driver's checkpoint of each finished generation. An
interrupted phase resumes from the last generation checkpoint and restores an unfinished generation's
Tune experiment (finished trials are not run again). A trial whose process dies is run again, up to
``ray.max_restarts`` times (Tune's ``FailureConfig``): an evaluation has no state to lose, so the re-run
measures the same candidate from the start.
"""
from __future__ import annotations

import copy
import logging
import math
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from forge.artifacts import atomic_write_json, load_model_dir, read_json, save_model_dir
from forge.console import Progress
from forge.criteria import criterion, missed
from forge.merge.evolve import (FITNESS_DEFINITION, EvoMergeConfig, Genome, NextGeneration, Scored, combine_fitness,
                          fitness_scores, improvement, initial_population, linear_fallback, next_generation,
                          population_diversity, stop_reason)
from forge.merge import check_compatible, infer_layer_layout, merge, weight_space_diversity
from forge.plots import pyplot, save_png
from forge.phases.base import PhaseContext, PhaseResult
from forge.data.heldout import HELDOUT
from actors.restarts import ATTEMPTS_FILE, record_attempt
from cluster.resources import evaluation_share
from forge.devices import limit_gpu_memory
from cluster.runtime import RayConfig
from forge.quant.measure import forward_latency

log = logging.getLogger(__name__)
# Tune's TensorBoard logger prints, at INFO, every trial's hyperparameters it cannot store (a candidate's whole
# genome): a console line of nested dicts per trial that says nothing about the merge.
logging.getLogger("ray.tune.logger.tensorboardx").setLevel(logging.WARNING)

PROBE_TOKENS = 16  # tokens of held-out text fed to every candidate before it is evaluated
PROBE_NEW_TOKENS = 4  # greedy steps of the generation check


# ------------------------------------------------------------------------------------ measurement

def heldout_token_ids(tokenizer, texts: Sequence[str], count: int) -> torch.Tensor:
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError("the held-out texts tokenize to nothing")
    repeats = -(-count // len(ids))
    return torch.tensor((ids * repeats)[:count])


@torch.no_grad()
def invalid_reason(model, probe_ids: torch.Tensor) -> str | None:
    """Why the loaded model is unusable (non-finite weights or logits, broken greedy generation), or None."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return f"non-finite weights in {name}"
    ids = probe_ids.to(next(model.parameters()).device).unsqueeze(0)
    for step in range(PROBE_NEW_TOKENS + 1):
        logits = model(input_ids=ids).logits[0, -1]
        if not torch.isfinite(logits).all():
            return "non-finite logits" if step == 0 else f"non-finite logits at generation step {step}"
        ids = torch.cat([ids, logits.argmax().view(1, 1)], dim=1)
    return None


def measure_terms(model, tokenizer, texts: Sequence[str], config: EvoMergeConfig, *,
                  data_dir: str | None) -> dict[str, float]:
    """Every fitness term of ``model``, measured: held-out perplexity, accuracy (``accuracy_tasks`` with
    ``data_dir``, ``accuracy_tasks_offline`` without), tokens/s, parameter count and bytes."""
    from benchmarks.harness import evaluate
    from benchmarks.lm import model_max_length, perplexity

    model.eval()
    window = min(config.perplexity_window, model_max_length(model, tokenizer))
    terms: dict[str, float] = {
        "perplexity": perplexity(model, tokenizer, texts, max_length=window),
        "vocab_size": float(model.config.vocab_size),
        "params": float(sum(p.numel() for p in model.parameters())),
        "bytes": float(sum(p.numel() * p.element_size() for p in model.parameters())),
    }
    tasks = config.accuracy_tasks if data_dir is not None else config.accuracy_tasks_offline
    if tasks:
        results = evaluate(model, tokenizer, tasks, limit=config.accuracy_limit,
                           seed=config.accuracy_seed, heldout_only=True, data_dir=data_dir)
        for name, result in results.items():
            terms[f"accuracy/{name}"] = result.score
        terms["accuracy"] = statistics.fmean(r.score for r in results.values())
    speed_ids = heldout_token_ids(tokenizer, texts, config.speed_batch * config.speed_seq_len)
    # The fastest of speed_repeats passes after one warm-up: the least disturbed by other load.
    terms["tokens_per_s"] = speed_ids.numel() / forward_latency(
        model, speed_ids.view(config.speed_batch, config.speed_seq_len), config.speed_repeats, warmup=1)
    return terms


# ----------------------------------------------------------------------------------- evaluation

@dataclass
class Candidate:
    """One candidate of a generation, built by the driver."""

    label: str  # unique name in the run, e.g. g3_c2_mutant
    genome: Genome | None  # what was evaluated (the fallback if the requested genome was invalid); None: a parent
    state_dict: dict[str, torch.Tensor]  # its weights
    merge_s: float  # seconds the driver spent merging it
    event: dict[str, Any] | None = None  # the invalid-merge replacement, if any


def build_candidate(label: str, genome: Genome, parents: Sequence[Mapping[str, torch.Tensor]], template,
                    probe_ids: torch.Tensor) -> Candidate:
    """Merge ``genome`` and check the result; an invalid merge is replaced by a linear merge (recorded)."""
    start = time.perf_counter()
    state_dict = genome.build(parents)
    template.load_state_dict(state_dict, strict=True)
    reason = invalid_reason(template, probe_ids)
    event = None
    if reason is not None:
        fallback = linear_fallback(genome)
        event = {"label": label, "reason": reason, "genome": genome.to_dict(), "replaced_by": fallback.describe()}
        log.warning("evomerge: %s (%s) is invalid: %s; replaced by a linear merge", label, genome.describe(), reason)
        genome, state_dict = fallback, fallback.build(parents)
        template.load_state_dict(state_dict, strict=True)
        if invalid_reason(template, probe_ids) is not None:
            raise ValueError(f"the linear merge of the parents is itself invalid ({reason}): check the parents")
    return Candidate(label, genome, state_dict, time.perf_counter() - start, event)


def _trial_dirname(trial) -> str:
    return f"{trial.config['candidate']['index']:02d}_{trial.config['candidate']['label']}"


def evaluate_trial(config: dict[str, Any], *, weights: list, template: Any, texts: list[str],
                   settings: dict[str, Any]) -> None:
    """Tune trainable: one candidate. Fetch its weights, load them into the template model, measure."""
    import ray
    from ray import tune

    record_attempt(settings["attempts_file"])
    torch.set_num_threads(settings["threads"])
    limit_gpu_memory(settings["device"], settings["gpu_memory_bytes"])
    candidate = config["candidate"]
    start = time.perf_counter()
    model, tokenizer = template
    model.load_state_dict(ray.get(weights[candidate["index"]]), strict=True)
    model.to(settings["device"])
    transfer_s = time.perf_counter() - start
    start = time.perf_counter()
    terms = measure_terms(model, tokenizer, texts, settings["config"], data_dir=settings["data_dir"])
    tune.report({**terms, "transfer_s": transfer_s, "eval_s": time.perf_counter() - start})


@dataclass
class Evaluation:
    """Measured terms of each candidate of one generation, and where the time went."""

    terms: list[dict[str, float]]  # per candidate, in order
    timings: dict[str, float]  # wall_s (the Tune experiment), and summed over candidates: merge_s (driver),
    # put_s (driver: weights into the object store), transfer_s (trial: fetch + load), eval_s (trial: measure)
    restored: bool  # the generation's Tune experiment was restored (resume), not started afresh


def evaluate_candidates(candidates: Sequence[Candidate], template, tokenizer, texts: Sequence[str],
                        config: EvoMergeConfig, *, storage: Path, name: str, data_dir: str | None,
                        device: str = "auto", eval_actors: int | None = None,
                        max_failures: int = RayConfig.max_restarts) -> Evaluation:
    """Evaluate ``candidates`` as one Tune experiment ``storage/name`` (restored if it exists); a trial that
    fails (its process died, or it raised) is run again up to ``max_failures`` times."""
    import ray
    from ray import tune

    n_actors = eval_actors or config.eval_actors
    share = evaluation_share(candidates[0].state_dict, device, n_actors)
    settings = {"threads": share.torch_threads, "device": share.device, "config": config, "data_dir": data_dir,
                "gpu_memory_bytes": share.gpu_memory_bytes,
                "attempts_file": str(storage / f"{name}_{ATTEMPTS_FILE}")}  # each trial process, for diagnosis
    start = time.perf_counter()
    refs = [ray.put(c.state_dict) for c in candidates]
    put_s = time.perf_counter() - start
    resources = {"cpu": share.num_cpus, **({"gpu": share.num_gpus} if share.num_gpus else {})}
    trainable = tune.with_resources(
        tune.with_parameters(evaluate_trial, weights=refs, template=(template, tokenizer), texts=list(texts),
                             settings=settings), resources)
    expected = [{"index": i, "label": c.label, "genome": c.genome and c.genome.to_dict()}
                for i, c in enumerate(candidates)]
    path = storage / name
    start = time.perf_counter()
    restored = tune.Tuner.can_restore(path)
    if restored:
        grid = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True).fit()
        stored = sorted((r.config["candidate"] for r in grid), key=lambda c: c["index"])
        if stored != _json_roundtrip(expected):
            log.warning("evomerge: %s holds other candidates than this generation's; evaluating afresh", path)
            shutil.rmtree(path)
            restored = False
    if not restored:
        tuner = tune.Tuner(
            trainable, param_space={"candidate": tune.grid_search(expected)},
            tune_config=tune.TuneConfig(max_concurrent_trials=n_actors, reuse_actors=True,
                                        trial_dirname_creator=_trial_dirname),
            run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=max_failures)))
        grid = tuner.fit()
    wall = time.perf_counter() - start
    by_index: dict[int, dict[str, float]] = {}
    for result in grid:
        label = result.config["candidate"]["label"]
        if result.error is not None:
            cause = (str(result.error).strip() or "no message").splitlines()[0]
            raise RuntimeError(
                f"evomerge: the Tune trial evaluating candidate {label} failed {max_failures + 1} time(s) "
                f"(ray.max_restarts={max_failures}): {type(result.error).__name__}: {cause}; log: "
                f"{Path(result.path) / 'error.txt'}. Finished trials are kept: run the same command to resume")
        by_index[result.config["candidate"]["index"]] = {
            k: float(v) for k, v in result.metrics.items()
            if k in {"perplexity", "vocab_size", "params", "bytes", "accuracy", "tokens_per_s", "transfer_s",
                     "eval_s"} or k.startswith("accuracy/")}
    terms = [by_index[i] for i in range(len(candidates))]
    timings = {"wall_s": wall, "merge_s": sum(c.merge_s for c in candidates), "put_s": put_s,
               "transfer_s": sum(t["transfer_s"] for t in terms), "eval_s": sum(t["eval_s"] for t in terms),
               "candidates": len(candidates), "eval_actors": n_actors}
    return Evaluation(terms, timings, restored)


def _json_roundtrip(obj: Any) -> Any:
    import json

    return json.loads(json.dumps(obj))


# ---------------------------------------------------------------------------------------- the phase

def _scored(entries: Sequence[Mapping[str, Any]]) -> list[Scored]:
    return [Scored(Genome.from_dict(e["genome"]), e["fitness"]) for e in entries]


def _generation_stats(generation: int, population: Sequence[Mapping[str, Any]], diversity: float,
                      initial_best: float | None) -> dict[str, Any]:
    fitness = [p["fitness"] for p in population]
    best = max(population, key=lambda p: p["fitness"])
    return {"generation": generation, "best": max(fitness), "mean": statistics.fmean(fitness), "worst": min(fitness),
            "diversity": diversity,
            "improvement": improvement(max(fitness), max(fitness) if initial_best is None else initial_best),
            "champion_label": best["label"], "champion_genome": Genome.from_dict(best["genome"]).describe()}


def logged_stats(stats: Mapping[str, Any]) -> dict[str, Any]:
    """A generation's stats as logged: ``evomerge/<stat>``, and the spec's W&B names (generation, best_fitness,
    diversity, improvement)."""
    return {**{f"evomerge/{k}": v for k, v in stats.items()}, "generation": stats["generation"],
            "best_fitness": stats["best"], "diversity": stats["diversity"], "improvement": stats["improvement"]}


def plot_history(history: Sequence[Mapping[str, Any]], parents: Sequence[Mapping[str, Any]], out: Path) -> Path:
    """Best, mean and worst fitness per generation against each parent's (the baselines a merge must beat), and
    the population's diversity, as a PNG written atomically."""
    plt = pyplot()
    generations = [h["generation"] for h in history]
    fig, (ax, ax_div) = plt.subplots(2, 1, figsize=(9.5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for key, style in (("best", "-o"), ("mean", "--"), ("worst", ":")):
        ax.plot(generations, [h[key] for h in history], style, label=f"{key} merged candidate")
    for index, parent in enumerate(parents):
        ax.axhline(parent["fitness"], color=f"C{index + 3}", linestyle="-.", linewidth=1.2,
                   label=f"{parent['label']} (baseline)")
    ax.set_ylabel("fitness")
    ax.set_title("Phase 2 EvoMerge: fitness per generation against the parents")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the lines, never over them
    ax.grid(alpha=0.3)
    ax_div.plot(generations, [h["diversity"] for h in history], "-s", color="tab:green")
    ax_div.set_ylabel("diversity")
    ax_div.set_xlabel("generation")
    ax_div.set_xticks(generations)
    ax_div.grid(alpha=0.3)
    return save_png(fig, out)


def evomerge_criteria(gain: float, gain_over_parent: float, parent_diversity: float,
                      config: EvoMergeConfig) -> dict[str, dict[str, Any]]:
    """The spec's Phase 2 criteria: improvement over generation 0's best >= 20% (success) and the parents'
    diversity > 0.3 (pre-flight), recorded as measured (the spec asserts them); and what a merge is for, which
    generation 0 does not show: the champion's fitness above the best parent's."""
    return {"improvement_over_generation0": criterion(gain, ">=", config.target_improvement),
            "champion_beats_best_parent": criterion(gain_over_parent, ">", 0.0),
            "parent_diversity": criterion(parent_diversity, ">", config.min_parent_diversity)}


def run(ctx: PhaseContext) -> PhaseResult:
    config: EvoMergeConfig = ctx.config.evomerge
    seed = ctx.config.seed
    if len(ctx.inputs) < 2:
        raise ValueError(f"evomerge merges at least two models; got {len(ctx.inputs)} from the previous phase")
    names = list(ctx.inputs)
    loaded = {name: load_model_dir(path) for name, path in ctx.inputs.items()}
    # Candidates are loaded into a copy of the first parent, so the parents' weights stay untouched; their
    # state dicts keep tied tensors aliased, which the merges rely on to keep tied weights identical.
    template, tokenizer = copy.deepcopy(loaded[names[0]][0]), loaded[names[0]][1]
    parents = [loaded[n][0].state_dict() for n in names]
    check_compatible(parents)
    # Settings that are not weights (e.g. Cognate's act_threshold, ltm_slots) come from the first parent.
    parent_configs = [loaded[n][0].config.to_dict() for n in names]
    config_differences = {k: [c.get(k) for c in parent_configs] for k in sorted(parent_configs[0])
                          if k != "_name_or_path" and any(c.get(k) != parent_configs[0][k] for c in parent_configs)}
    n_layers = infer_layer_layout(parents[0].keys()).num_layers
    parent_diversity = weight_space_diversity(parents)
    if parent_diversity < config.min_parent_diversity:
        log.warning("evomerge: parents' weight-space diversity %.3f is below %.2f", parent_diversity,
                    config.min_parent_diversity)
    center = merge("linear", parents)
    texts = ctx.read_texts(HELDOUT, config.heldout_max_chars)
    probe_ids = heldout_token_ids(tokenizer, texts, PROBE_TOKENS)
    data_dir = ctx.data_dir
    storage = (ctx.work_dir / "tune").resolve()
    checkpoints = ctx.work_dir / "generations"
    checkpoints.mkdir(parents=True, exist_ok=True)
    tracker = ctx.tracker("evomerge", run_config={"evomerge": config.__dict__, "parents": names})
    evaluate_kwargs = {"storage": storage, "data_dir": data_dir, "device": ctx.config.device,
                       "max_failures": ctx.config.ray.max_restarts}

    def checkpoint_path(generation: int) -> Path:
        return checkpoints / f"gen_{generation:03d}.json"

    def score(entries: list[dict[str, Any]], reference: Mapping[str, float]) -> None:
        for entry in entries:
            entry["scores"] = fitness_scores(entry["terms"], reference)
            entry["fitness"] = combine_fitness(entry["scores"], config)

    # Resume: the generations already finished, and the weights of the last one's population.
    done = sorted(checkpoints.glob("gen_*.json"))
    records = [read_json(p) for p in done]
    resumed_from = records[-1]["generation"] if records else None
    if not records:
        # Generation 0: the 8 combos, evaluated with the parents (the speed and size reference) in one experiment.
        combos = [build_candidate(f"g0_combo{g.recipes[0].combo_id}", g, parents, template, probe_ids)
                  for g in initial_population(len(parents), n_layers, seed)]
        parent_candidates = [Candidate(f"parent_{n}", None, sd, 0.0) for n, sd in zip(names, parents)]
        evaluation = evaluate_candidates(parent_candidates + combos, template, tokenizer, texts, config,
                                         name="gen_000", **evaluate_kwargs)
        parents_record = [{"label": c.label, "terms": t} for c, t in zip(parent_candidates, evaluation.terms)]
        reference = {"tokens_per_s": statistics.median(p["terms"]["tokens_per_s"] for p in parents_record),
                     "bytes": statistics.median(p["terms"]["bytes"] for p in parents_record)}
        score(parents_record, reference)
        population = [{"label": c.label, "genome": c.genome.to_dict(), "terms": t}
                      for c, t in zip(combos, evaluation.terms[len(parents):])]
        score(population, reference)
        weights = {c.label: c.state_dict for c in combos}
        diversity = population_diversity(list(weights.values()), center)
        stats = _generation_stats(0, population, diversity, None)
        record = {"generation": 0, "population": population, "stats": stats, "reference": reference,
                  "parents": parents_record, "events": [c.event for c in combos if c.event],
                  "injected": False, "timings": evaluation.timings, "tune_restored": evaluation.restored}
        atomic_write_json(checkpoint_path(0), record)
        records.append(record)
        tracker.log(logged_stats(stats), step=0)
        parent_fitness = ", ".join(f"{p['label']} {p['fitness']:.4f}" for p in parents_record)
        print(f"[forge] evomerge: generation 0: best {stats['best']:.4f} ({stats['champion_genome']}) mean "
              f"{stats['mean']:.4f}; parents: {parent_fitness}; diversity {diversity:.3f}", flush=True)
    else:
        weights = {p["label"]: Genome.from_dict(p["genome"]).build(parents) for p in records[-1]["population"]}

    reference = records[0]["reference"]
    # Generations after the first: the bar counts toward max_generations (a stop rule may end it sooner).
    with Progress("evomerge: generations", config.max_generations, "generation", done=records[-1]["generation"]) \
            as progress:
        while True:
            last = records[-1]
            history = [r["stats"]["best"] for r in records]
            reason = stop_reason(history, config)
            if reason is not None:
                break
            generation = last["generation"] + 1
            plan: NextGeneration = next_generation(_scored(last["population"]), last["stats"]["diversity"],
                                                   generation, len(parents), n_layers, config, seed)
            kept = sorted(last["population"], key=lambda p: p["fitness"], reverse=True)[:len(plan.kept)]  # = plan.kept
            candidates = [build_candidate(f"g{generation}_c{i}_{g.origin}", g, parents, template, probe_ids)
                          for i, g in enumerate(plan.children)]
            evaluation = evaluate_candidates(candidates, template, tokenizer, texts, config,
                                             name=f"gen_{generation:03d}", **evaluate_kwargs)
            children = [{"label": c.label, "genome": c.genome.to_dict(), "terms": t}
                        for c, t in zip(candidates, evaluation.terms)]
            score(children, reference)
            population = kept + children
            weights = {**{p["label"]: weights[p["label"]] for p in kept},
                       **{c.label: c.state_dict for c in candidates}}
            diversity = population_diversity([weights[p["label"]] for p in population], center)
            stats = _generation_stats(generation, population, diversity, records[0]["stats"]["best"])
            stats["injected"] = plan.injected
            record = {"generation": generation, "population": population, "stats": stats,
                      "events": [c.event for c in candidates if c.event], "injected": plan.injected,
                      "timings": evaluation.timings, "tune_restored": evaluation.restored}
            atomic_write_json(checkpoint_path(generation), record)
            records.append(record)
            tracker.log(logged_stats(stats), step=generation)
            print(f"[forge] evomerge: generation {generation}: best {stats['best']:.4f} mean {stats['mean']:.4f} "
                  f"diversity {diversity:.3f} improvement {stats['improvement']:+.1%}"
                  f"{' (random combo injected)' if plan.injected else ''}", flush=True)
            progress.update()

    # The champion: the best of the last population.
    final = records[-1]
    champion = max(final["population"], key=lambda p: p["fitness"])
    best_parent = max(records[0]["parents"], key=lambda p: p["fitness"])
    # The champion is always written; whether it or a parent goes on is the scoreboard gate's call (forge.pipeline).
    template.load_state_dict(weights[champion["label"]], strict=True)
    initial_best = records[0]["stats"]["best"]
    gain = improvement(champion["fitness"], initial_best)
    gain_over_parent = improvement(champion["fitness"], best_parent["fitness"])
    outcome = {
        "champion": {"label": champion["label"], "genome": champion["genome"], "fitness": champion["fitness"],
                     "terms": champion["terms"], "scores": champion["scores"]},
        "parents": {p["label"]: {"fitness": p["fitness"], "terms": p["terms"], "scores": p["scores"]}
                    for p in records[0]["parents"]},
        "generation0_best": {"fitness": initial_best, "label": records[0]["stats"]["champion_label"]},
        "improvement_over_generation0": gain,
        "best_parent": {"fitness": best_parent["fitness"], "label": best_parent["label"]},
        "improvement_over_best_parent": gain_over_parent,
        "criteria": evomerge_criteria(gain, gain_over_parent, parent_diversity, config),
        "stop_reason": reason,
        "generations": final["generation"],
        "config_from": names[0],
        "parent_config_differences": config_differences,
    }
    out_dir = save_model_dir(template, tokenizer, ctx.phase_dir / "champion", phase="evomerge",
                             extra={"evomerge": outcome})
    plot = plot_history([r["stats"] for r in records], records[0]["parents"], ctx.phase_dir / "fitness.png")
    target_met = outcome["criteria"]["improvement_over_generation0"]["met"]
    tracker.log({"evomerge/champion_fitness": champion["fitness"], "evomerge/improvement_over_gen0": gain,
                 "evomerge/spec_target_met": target_met})
    tracker.finish()
    print(f"[forge] evomerge: champion {champion['label']} fitness {champion['fitness']:.4f} (generation 0 best "
          f"{initial_best:.4f}, best parent {best_parent['fitness']:.4f}: {gain_over_parent:+.1%}): {gain:+.1%} vs the spec's "
          f"{config.target_improvement:.0%} target: {'met' if target_met else 'missed'} "
          f"({reason} after {final['generation']} generations); the scoreboard gate decides whether it goes on",
          flush=True)
    summary = {
        **outcome,
        "criteria_missed": missed(outcome["criteria"]),
        "fitness_definition": FITNESS_DEFINITION,
        "fitness_terms": sorted(champion["scores"]),
        "accuracy_data_dir": data_dir,
        "parent_diversity": parent_diversity,
        "parent_diversity_warning": parent_diversity < config.min_parent_diversity,
        "history": [r["stats"] for r in records],
        "invalid_merges": [e for r in records for e in r["events"]],
        "injections": [r["generation"] for r in records if r["injected"]],
        "timings": {r["generation"]: r["timings"] for r in records},
        "resumed_from_generation": resumed_from,
        "tune_restored_generations": [r["generation"] for r in records if r["tune_restored"]],
        "tune_dir": str(storage),
        "plot": plot.name,
        "speed_reference": reference,
    }
    if not all(math.isfinite(p["fitness"]) for r in records for p in r["population"]):
        summary["warning"] = "some candidates had a non-finite fitness (see history)"
    return PhaseResult(outputs={"champion": out_dir}, summary=summary)
