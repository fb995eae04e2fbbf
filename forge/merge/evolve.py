"""EvoMerge's evolution logic in plain Python: genomes, the generation-0 population, the next generation.

A candidate is a :class:`Genome`: one or more :class:`Recipe` s (a merge combo of the parents with its
continuous parameters), mixed linearly when there are several (that is how a loser merge is written
down). Every genome rebuilds its model exactly from the parents' weights, so a generation is fully
described by its genomes and a resumed run rebuilds the same models.

The schedule (spec, Phase 2): generation 0 is the 8 combos; afterwards the 2 best are kept, the 2
worst are merged into one child, the rest are mutants of the elites, and when the population's
weight-space diversity falls under 0.25 one child is replaced by a random combo. Stop at 50
generations, at 30% improvement over generation 0's best, or on a plateau.
"""
from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar

import torch

from forge.criteria import is_met
from forge.merge import NUM_COMBOS, ComboParams, apply_combo, merge, weight_space_diversity
from forge.merge.methods import StateDict


@dataclass
class EvoMergeConfig:
    """Phase 2: evolutionary merging of the Cognate models (defaults: the tiny preset)."""

    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        "keep_best_parent": (
            "the scoreboard gate replaced it (scoreboard.gate, scoreboard.primary_metric, scoreboard.tolerance: a "
            "phase whose output scores worse than its best input hands that input on)")}
    """Keys an older config may still set, with what replaced them (the config loader refuses them so)."""

    population_size: int = 8
    """Candidates per generation (spec: 8, the number of combos)."""
    elites: int = 2
    """Best candidates kept unchanged into the next generation (spec: 2)."""
    losers_merged: int = 2
    """Worst candidates merged into one child each generation (spec: 2)."""
    max_generations: int = 8
    """Generations after generation 0 at most (spec: 50)."""
    early_stop_improvement: float = 0.30
    """Stop once the best fitness is more than this (relative) above generation 0's best (spec: > 30%)."""
    target_improvement: float = 0.20
    """The spec's success criterion on that improvement; the summary records it as met or missed."""
    plateau_generations: int = 3
    """Stop when the best fitness has not improved over this many generations ..."""
    plateau_tolerance: float = 0.005
    """... by more than this fraction of its value."""
    diversity_threshold: float = 0.25
    """Below this population diversity (spec: 0.25) a random combo is injected."""
    min_parent_diversity: float = 0.3
    """Parents' weight-space diversity below this (spec pre-flight: 0.3) is recorded as a warning."""
    mutation_sigma: float = 0.1
    """Standard deviation of the Gaussian steps on the continuous merge parameters."""
    bit_flip_rate: float = 0.15
    """Probability that a mutation flips each of a combo's three method bits."""
    layer_mutation_rate: float = 0.2
    """Probability that a mutation re-draws a layer's source (and moves its DFS layer index)."""
    max_recipes: int = 3
    """Most merge recipes one genome mixes (loser merges of loser merges are trimmed to this)."""
    heldout_max_chars: int = 10_000
    """Characters of Phase 1's held-out texts used for the perplexity term (tiny: 10,000 chose the same champion
    as 20,000, with each candidate's evaluation ~40% shorter; docs/BENCHMARKS.md)."""
    perplexity_window: int = 128
    """Tokens per perplexity window (sliding, half overlap); the tiny models train on 128-token sequences."""
    accuracy_tasks: list[str] = field(default_factory=lambda: ["arc_easy"])
    """Harness tasks (held-out items only) for the accuracy term; used when a data folder is configured."""
    accuracy_tasks_offline: list[str] = field(default_factory=lambda: ["taskworld_easy"])
    """Accuracy tasks without a data folder: generated held-out items (the task world's easy problems); []: none."""
    accuracy_limit: int = 20
    """Items per accuracy task, drawn with accuracy_seed."""
    accuracy_seed: int = 1234
    """Seed of the accuracy items' draw (fixed, so every candidate sees the same items)."""
    speed_batch: int = 4
    """Sequences per timed forward pass of the tokens/s term."""
    speed_seq_len: int = 64
    """Tokens per sequence of the timed forward pass."""
    speed_repeats: int = 5
    """Timed forward passes (the fastest counts: least disturbed by other load)."""
    weight_perplexity: float = 0.6
    """Fitness weight of the held-out perplexity score."""
    weight_accuracy: float = 0.3
    """Fitness weight of the held-out accuracy (dropped, and the rest renormalised, without accuracy tasks)."""
    weight_speed: float = 0.05
    """Fitness weight of measured tokens/s relative to the parents."""
    weight_size: float = 0.05
    """Fitness weight of the parameter bytes relative to the parents (smaller is better)."""
    eval_actors: int = 2
    """Candidates evaluated at the same time (Tune trials running at once, each with its resource share)."""

    def __post_init__(self) -> None:
        if self.population_size < self.elites + self.losers_merged or self.population_size < NUM_COMBOS:
            raise ValueError(f"evomerge.population_size must be >= {NUM_COMBOS} (the generation-0 combos) and "
                             f">= elites + losers_merged, got {self.population_size}")
        if self.population_size - self.elites < 2:
            raise ValueError("evomerge: population_size - elites must leave room for the loser merge and a mutant")
        if self.losers_merged < 2:
            raise ValueError("evomerge.losers_merged: merging needs at least 2 losers")
        if self.max_recipes < 1 or self.eval_actors < 1:
            raise ValueError("evomerge.max_recipes and evomerge.eval_actors must be >= 1")
        weights = (self.weight_perplexity, self.weight_accuracy, self.weight_speed, self.weight_size)
        if min(weights) < 0 or self.weight_perplexity + self.weight_speed + self.weight_size <= 0:
            raise ValueError("evomerge weights must be >= 0 and the perplexity/speed/size weights must not all be 0")


# ------------------------------------------------------------------------------------------------ genomes

@dataclass(frozen=True)
class Recipe:
    """One merge of the parents: a combo with its continuous and per-layer parameters."""

    combo_id: int | None  # 0..7 (bits: SLERP?, DARE?, DFS?); None: the plain linear merge (invalid-merge fallback)
    weights: tuple[float, ...]  # stage-1 weight of each parent (sum 1)
    density: float = 0.5  # stage 2: fraction of each task vector TIES/DARE keeps
    task_scale: float = 1.0  # stage 2: factor on the merged task vector
    layer_sources: tuple[int, ...] = ()  # stage 3: per layer position, 0 = stage-2 model, k = parent k
    layer_indices: tuple[int, ...] = ()  # stage 3, DFS: which layer of its source each position runs
    layer_scales: tuple[float, ...] = ()  # stage 3, DFS: residual-output scale per position
    seed: int = 0  # DARE's masks

    def build(self, parents: Sequence[Mapping[str, torch.Tensor]]) -> StateDict:
        if self.combo_id is None:
            return merge("linear", parents, weights=self.weights)
        params = ComboParams(weights=self.weights, density=self.density, task_scale=self.task_scale,
                             layer_sources=self.layer_sources, layer_indices=self.layer_indices,
                             layer_scales=self.layer_scales)
        return apply_combo(parents, self.combo_id, params, seed=self.seed)


@dataclass(frozen=True)
class Genome:
    """A candidate: the linear mix of its recipes' models (one recipe: that merge itself)."""

    recipes: tuple[Recipe, ...]  # merges of the parents
    mix: tuple[float, ...]  # weight of each recipe's model (sum 1)
    origin: str  # how it was made: combo, mutant, loser_merge, injected, linear_fallback

    def build(self, parents: Sequence[Mapping[str, torch.Tensor]]) -> StateDict:
        """The candidate's weights, rebuilt exactly from the parents."""
        models = [recipe.build(parents) for recipe in self.recipes]
        return models[0] if len(models) == 1 else merge("linear", models, weights=self.mix)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Genome":
        recipes = tuple(Recipe(**{k: tuple(v) if isinstance(v, list) else v for k, v in r.items()})
                        for r in data["recipes"])
        return cls(recipes=recipes, mix=tuple(data["mix"]), origin=data["origin"])

    def describe(self) -> str:
        """Short human-readable form, e.g. ``0.50*combo5 + 0.50*linear``."""
        names = [f"combo{r.combo_id}" if r.combo_id is not None else "linear" for r in self.recipes]
        return " + ".join(f"{m:.2f}*{n}" for m, n in zip(self.mix, names)) if len(names) > 1 else names[0]


def combo_recipe(combo_id: int, n_parents: int, n_layers: int, rng: random.Random) -> Recipe:
    """Combo ``combo_id`` with the default parameters: equal weights, density 0.5, scale 1, DFS identity path;
    FrankenMerge/DFS layer sources drawn from ``rng`` (a layer-wise merge of only the stage-2 model would be
    that model)."""
    return Recipe(combo_id=combo_id, weights=tuple([1.0 / n_parents] * n_parents),
                  layer_sources=tuple(rng.randrange(n_parents + 1) for _ in range(n_layers)),
                  layer_indices=tuple(range(n_layers)), layer_scales=tuple([1.0] * n_layers),
                  seed=rng.randrange(2**31))


def initial_population(n_parents: int, n_layers: int, seed: int) -> list[Genome]:
    """Generation 0: the 8 binary combos, 000 to 111."""
    rng = random.Random(f"evomerge:{seed}:generation0")
    return [Genome((combo_recipe(c, n_parents, n_layers, rng),), (1.0,), "combo") for c in range(NUM_COMBOS)]


def linear_fallback(genome: Genome) -> Genome:
    """The plain linear merge that replaces an invalid candidate (with its first recipe's parent weights)."""
    return Genome((Recipe(combo_id=None, weights=genome.recipes[0].weights),), (1.0,), "linear_fallback")


def _normalise(values: Sequence[float]) -> tuple[float, ...]:
    total = sum(values)
    return tuple(v / total for v in values)


def _clip(value: float, low: float, high: float) -> float:
    return min(high, max(low, value))


def mutate_recipe(recipe: Recipe, n_parents: int, n_layers: int, config: EvoMergeConfig,
                  rng: random.Random) -> Recipe:
    """Flip method bits, take Gaussian steps on the continuous parameters, re-draw some layer choices."""
    sigma = config.mutation_sigma
    if recipe.combo_id is None:  # a fallback mutates into a combo around its weights
        recipe = replace(combo_recipe(rng.randrange(NUM_COMBOS), n_parents, n_layers, rng), weights=recipe.weights)
    combo = recipe.combo_id
    for bit in range(3):
        if rng.random() < config.bit_flip_rate:
            combo ^= 1 << bit
    sources = tuple(rng.randrange(n_parents + 1) if rng.random() < config.layer_mutation_rate else s
                    for s in recipe.layer_sources)
    indices = tuple(int(_clip(i + rng.choice((-1, 1)), 0, n_layers - 1))
                    if rng.random() < config.layer_mutation_rate else i for i in recipe.layer_indices)
    return Recipe(
        combo_id=combo,
        weights=_normalise([w * math.exp(rng.gauss(0.0, sigma)) for w in recipe.weights]),
        density=_clip(recipe.density + rng.gauss(0.0, sigma / 2), 0.1, 1.0),
        task_scale=_clip(recipe.task_scale + rng.gauss(0.0, sigma), 0.0, 2.0),
        layer_sources=sources,
        layer_indices=indices,
        layer_scales=tuple(_clip(s + rng.gauss(0.0, sigma), 0.5, 1.5) for s in recipe.layer_scales),
        seed=rng.randrange(2**31),
    )


def mutate(genome: Genome, n_parents: int, n_layers: int, config: EvoMergeConfig, rng: random.Random) -> Genome:
    """A child of ``genome``: every recipe mutated and the mix jittered."""
    recipes = tuple(mutate_recipe(r, n_parents, n_layers, config, rng) for r in genome.recipes)
    mix = _normalise([m * math.exp(rng.gauss(0.0, config.mutation_sigma)) for m in genome.mix])
    return Genome(recipes, mix, "mutant")


def merge_losers(losers: Sequence[Genome], max_recipes: int) -> Genome:
    """The losers' models averaged into one child (their recipes with the mix shared equally); when that
    exceeds ``max_recipes``, the recipes with the largest shares are kept and renormalised."""
    parts = [(m / len(losers), r) for g in losers for m, r in zip(g.mix, g.recipes)]
    parts = sorted(parts, key=lambda p: -p[0])[:max_recipes]
    return Genome(tuple(r for _, r in parts), _normalise([m for m, _ in parts]), "loser_merge")


@dataclass
class Scored:
    """A genome with its measured fitness."""

    genome: Genome  # the candidate
    fitness: float  # weighted combination of its measured terms


@dataclass
class NextGeneration:
    """The next population's plan: who is kept, which new genomes to evaluate, what happened."""

    kept: list[Scored]  # elites, carried over with their fitness
    children: list[Genome]  # new candidates: loser merge, mutants, maybe one injected combo
    injected: bool  # a random combo replaced the last mutant because diversity was low


def next_generation(population: Sequence[Scored], diversity: float, generation: int, n_parents: int,
                    n_layers: int, config: EvoMergeConfig, seed: int) -> NextGeneration:
    """Plan generation ``generation`` from the previous ``population`` (seeded per generation, so a resumed
    run plans the same children)."""
    rng = random.Random(f"evomerge:{seed}:generation{generation}")
    ranked = sorted(population, key=lambda s: s.fitness, reverse=True)
    elites = ranked[:config.elites]
    losers = [s.genome for s in ranked[-config.losers_merged:]]
    children = [merge_losers(losers, config.max_recipes)]
    while len(children) < config.population_size - len(elites):
        parent = elites[(len(children) - 1) % len(elites)].genome
        children.append(mutate(parent, n_parents, n_layers, config, rng))
    injected = diversity < config.diversity_threshold
    if injected:
        recipe = combo_recipe(rng.randrange(NUM_COMBOS), n_parents, n_layers, rng)
        children[-1] = Genome((recipe,), (1.0,), "injected")
    return NextGeneration(kept=list(elites), children=children, injected=injected)


# -------------------------------------------------------------------------------------- measurements

def population_diversity(state_dicts: Sequence[Mapping[str, torch.Tensor]],
                         reference: Mapping[str, torch.Tensor]) -> float:
    """Mean pairwise normalised distance (``weight_space_diversity``) of the candidates' parameter deltas from
    ``reference`` (the parents' average): 0 when all candidates are one model, ~1 for unrelated deltas."""
    deltas = [{k: (sd[k].float() - reference[k].float()) for k in reference if reference[k].is_floating_point()}
              for sd in state_dicts]
    return weight_space_diversity(deltas)


FITNESS_DEFINITION = (
    "weighted mean of: perplexity score 1 - ln(ppl)/ln(vocab) on Phase 1's held-out texts (0 = uniform "
    "guessing, 1 = perfect); held-out accuracy (harness primary metric, mean over accuracy_tasks; without a "
    "data folder accuracy_tasks_offline); speed min(tokens/s / parents' median tokens/s, 2); size min(parents' bytes / bytes, 2)")


def fitness_scores(terms: Mapping[str, float], reference: Mapping[str, float]) -> dict[str, float]:
    """The measured terms as scores (higher is better); see FITNESS_DEFINITION."""
    scores = {
        "perplexity": 1.0 - math.log(terms["perplexity"]) / math.log(terms["vocab_size"]),
        "speed": min(terms["tokens_per_s"] / reference["tokens_per_s"], 2.0),
        "size": min(reference["bytes"] / terms["bytes"], 2.0),
    }
    if "accuracy" in terms:
        scores["accuracy"] = terms["accuracy"]
    return scores


def combine_fitness(scores: Mapping[str, float], config: EvoMergeConfig) -> float:
    """Weighted mean of the scores present (a term not measured drops out and the rest are renormalised)."""
    weights = {"perplexity": config.weight_perplexity, "accuracy": config.weight_accuracy,
               "speed": config.weight_speed, "size": config.weight_size}
    used = {k: w for k, w in weights.items() if k in scores and w > 0}
    if any(not math.isfinite(scores[k]) for k in used):
        return float("-inf")
    return sum(w * scores[k] for k, w in used.items()) / sum(used.values())


def improvement(best: float, initial_best: float) -> float:
    """Relative improvement of ``best`` over generation 0's best."""
    return (best - initial_best) / (abs(initial_best) or 1.0)


def stop_reason(best_history: Sequence[float], config: EvoMergeConfig) -> str | None:
    """Why evolution stops after the last generation in ``best_history`` (index = generation), or None."""
    generation = len(best_history) - 1
    # The spec stops early when the improvement is strictly above 30%.
    if generation >= 1 and is_met(improvement(best_history[-1], best_history[0]), ">", config.early_stop_improvement):
        return "target_improvement"
    if generation >= config.max_generations:
        return "max_generations"
    p = config.plateau_generations
    if generation >= p:
        before = best_history[-1 - p]
        if best_history[-1] - before <= config.plateau_tolerance * abs(before):
            return "plateau"
    return None
