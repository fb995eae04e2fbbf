"""Phase 1's data stages (the spec's pretraining "curriculum"; Phase 5 is the curriculum phase): three stages,
each a seeded mix weighted by category.

Spec (Phase 1): Foundation (GSM8K, SVAMP, Mini-MBPP), Reasoning (ARC-Easy, ARC-Challenge, PIQA,
WikiText), Advanced (HotpotQA, DROP, HellaSwag, FineWeb-Edu), with category weights
{"math": 0.4, "qa": 0.3, "code": 0.1, "commonsense": 0.1, "language": 0.1}. A stage uses the weights of
the categories it contains, renormalised to sum to one; a category's share is divided between its
datasets that loaded in proportion to their size (so a small set such as SVAMP is not repeated many
times over to match GSM8K). Shares are of characters, not documents (a WikiText article is a hundred
times longer than an ARC question, and the model trains on tokens). A dataset is drawn in seeded
passes without replacement until its character budget is met, so a small set is repeated and a large
one sampled; every stage records, per dataset, the source used and what was available and drawn.
Datasets with a fixed share (``StageMixConfig.fixed_shares``, e.g. the generated task world) join every stage
at that share of its characters, whatever their category; the category weights divide the rest.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Mapping

from forge.data.sources import CATEGORIES, LoadedTexts, SourceConfig, get_source, load_texts

DEFAULT_CATEGORY_WEIGHTS: dict[str, float] = {
    "math": 0.4, "qa": 0.3, "code": 0.1, "commonsense": 0.1, "language": 0.1}

# Spec: model 1 reasoning-focused (the default mix), model 2 "language-heavy", model 3
# "commonsense-heavy". The spec gives no numbers for models 2 and 3; these move 0.3 of weight to the
# named category.
COGNATE_MODEL_WEIGHTS: dict[int, dict[str, float]] = {
    1: dict(DEFAULT_CATEGORY_WEIGHTS),
    2: {"math": 0.2, "qa": 0.2, "code": 0.1, "commonsense": 0.1, "language": 0.4},
    3: {"math": 0.2, "qa": 0.2, "code": 0.1, "commonsense": 0.4, "language": 0.1},
}

STAGES: dict[str, tuple[str, ...]] = {
    "foundation": ("gsm8k", "svamp", "mbpp"),
    "reasoning": ("arc_easy", "arc_challenge", "piqa", "wikitext"),
    "advanced": ("hotpotqa", "drop", "hellaswag", "fineweb_edu"),
}


@dataclass(frozen=True)
class StageMixConfig:
    """What each pretraining stage contains and how it is mixed."""

    # weight of each category in a stage's mix (renormalised over the categories the stage has)
    category_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_CATEGORY_WEIGHTS))
    stages: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(STAGES))  # stage -> datasets
    chars_per_stage: int = 2_000_000  # characters of text in each stage's mix (about 4 per GPT-2 token)
    seed: int = 0  # mixing seed (sources.seed drives sampling and offline generation)
    sources: SourceConfig = field(default_factory=SourceConfig)  # how datasets are loaded
    # datasets in every stage at a fixed share of its characters, outside the category weights ({"taskworld": 0.8})
    fixed_shares: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [name for name in self.category_weights if name not in CATEGORIES]
        if unknown:
            raise ValueError(f"unknown categories {unknown}; use {CATEGORIES}")
        if any(weight < 0 for weight in self.category_weights.values()) or \
                sum(self.category_weights.values()) <= 0:
            raise ValueError(f"category weights {dict(self.category_weights)} must be >= 0 with a positive sum")
        for stage, names in self.stages.items():
            if not names:
                raise ValueError(f"stage {stage!r} lists no datasets")
            for name in names:
                get_source(name)  # raises for an unknown dataset name
        if self.chars_per_stage < 1:
            raise ValueError(f"chars_per_stage={self.chars_per_stage} must be >= 1")
        for name in self.fixed_shares:
            get_source(name)
        if any(share < 0 for share in self.fixed_shares.values()) or sum(self.fixed_shares.values()) >= 1:
            raise ValueError(f"fixed shares {dict(self.fixed_shares)} must be >= 0 and sum to less than 1 (the "
                             "category weights divide the rest of each stage)")


@dataclass
class DatasetDraw:
    """How one dataset entered a stage's mix."""

    dataset: str  # registry key
    category: str  # curriculum category
    source: str | None  # source actually used; None when skipped
    available: int  # texts the source provided
    available_chars: int  # their total length
    drawn: int  # texts taken into the mix (more than available means repeats)
    drawn_chars: int  # their total length
    weight: float  # target share of the stage's characters
    attempts: list[str]  # why earlier sources were not used


@dataclass
class StageMix:
    """One pretraining stage: the shuffled training texts and the record of where they came from."""

    stage: str  # stage name
    texts: list[str]  # the mixed, shuffled documents
    draws: list[DatasetDraw]  # one entry per dataset of the stage, skipped ones included
    category_weights: dict[str, float]  # the renormalised weights actually used (summing to 1 - the fixed shares)

    def summary(self) -> dict[str, Any]:
        """JSON-ready record of the stage (without the texts)."""
        return {"stage": self.stage, "texts": len(self.texts), "category_weights": self.category_weights,
                "datasets": [vars(draw) for draw in self.draws]}


def _draw(texts: list[str], budget: int, rng: random.Random) -> list[str]:
    """Texts in seeded passes over ``texts`` (no repeat within a pass) until ``budget`` characters."""
    drawn: list[str] = []
    used = 0
    while used < budget:
        for text in rng.sample(texts, len(texts)):
            drawn.append(text)
            used += len(text)
            if used >= budget:
                break
    return drawn


def build_stage(stage: str, config: StageMixConfig = StageMixConfig(),
                loaded: Mapping[str, LoadedTexts] | None = None) -> StageMix:
    """The mix of one stage; ``loaded`` may supply datasets already loaded (by name)."""
    if stage not in config.stages:
        raise ValueError(f"unknown stage {stage!r}; configured: {', '.join(config.stages)}")
    fixed = {name: share for name, share in config.fixed_shares.items() if share > 0}
    names = [name for name in config.stages[stage] if name not in fixed] + list(fixed)
    results = {name: (loaded or {}).get(name) or load_texts(name, config.sources) for name in names}
    fixed = {name: share for name, share in fixed.items() if not results[name].skipped}
    present = {name: result for name, result in results.items() if not result.skipped and name not in fixed}
    by_category: dict[str, list[str]] = {}
    for name, result in present.items():
        by_category.setdefault(result.category, []).append(name)
    weights = {category: config.category_weights.get(category, 0.0) for category in by_category}
    weights = {category: weight for category, weight in weights.items() if weight > 0}
    if not weights:
        raise ValueError(f"stage {stage!r} has no loaded dataset in a category with positive weight "
                         f"(loaded: {sorted(present)}, weights: {dict(config.category_weights)})")
    total_weight = sum(weights.values()) / (1.0 - sum(fixed.values()))  # the categories share what is not fixed
    weights = {category: weight / total_weight for category, weight in weights.items()}
    sizes = {name: sum(map(len, result.texts)) for name, result in present.items()}
    dataset_weights = {}
    for category, members in by_category.items():
        if category in weights:
            category_size = sum(sizes[name] for name in members)
            dataset_weights.update({name: weights[category] * sizes[name] / category_size for name in members})
    dataset_weights.update(fixed)
    rng = random.Random(f"{stage}/{config.seed}")
    texts: list[str] = []
    draws = []
    for name in names:
        result = results[name]
        weight = dataset_weights.get(name, 0.0)
        drawn = _draw(result.texts, round(weight * config.chars_per_stage), rng) if weight else []
        texts.extend(drawn)
        draws.append(DatasetDraw(dataset=name, category=result.category, source=result.source,
                                 available=len(result.texts), available_chars=sum(map(len, result.texts)),
                                 drawn=len(drawn), drawn_chars=sum(map(len, drawn)), weight=weight,
                                 attempts=list(result.attempts)))
    rng.shuffle(texts)
    return StageMix(stage=stage, texts=texts, draws=draws, category_weights=weights)


def build_stages(config: StageMixConfig = StageMixConfig()) -> list[StageMix]:
    """Every configured stage in order; each dataset is loaded once even if several stages use it."""
    loaded: dict[str, LoadedTexts] = {}
    for names in [*config.stages.values(), config.fixed_shares]:
        for name in names:
            if name not in loaded:
                loaded[name] = load_texts(name, config.sources)
    return [build_stage(stage, config, loaded) for stage in config.stages]
