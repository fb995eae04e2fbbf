"""Bakes built from bakes: stacking half-bakes, sequential prompts, and prompt pursuit.

Strengths here are measured on held-out trajectories of the ORIGINAL model with the prompt:
``1 - KL(original + prompt || model) / KL(original + prompt || original)``. The original is kept as
a frozen copy, since each bake merges its adapter into the weights of the model it was given.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence

from torch import nn

from forge.baking.bake import TrajectorySet, bake_prompt, mean_kl, sample_trajectory_set, within_tolerance
from forge.baking.config import BakingConfig
from forge.baking.kl import plain
from forge.baking.trajectories import Trajectory


@dataclass
class PromptTarget:
    """A prompt, held-out trajectories of the original model with it, and the unbaked distance."""

    prompt: str  # the prompt
    trajectories: TrajectorySet  # sampled from the original model with the prompt
    kl_reference: float  # held-out KL(original + prompt || original)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode with no trainable parameters."""
    original = copy.deepcopy(model).eval()
    for param in original.parameters():
        param.requires_grad_(False)
    return original


def prompt_target(original: nn.Module, tokenizer, prompt: str, inputs: Sequence[str] | None,
                  config: BakingConfig) -> PromptTarget:
    """Sample the original model's prompted behaviour once; measure how far its unprompted self is."""
    trajectories = sample_trajectory_set(plain(original), tokenizer, prompt, inputs, config)
    kl_reference = mean_kl(plain(original), plain(original), trajectories.heldout, tokenizer, config)
    return PromptTarget(prompt=prompt, trajectories=trajectories, kl_reference=kl_reference)


def measured_strength(original: nn.Module, model: nn.Module, tokenizer, target: PromptTarget,
                      config: BakingConfig) -> float:
    """``1 - KL(original + prompt || model) / KL(original + prompt || original)`` on held-out inputs."""
    kl = mean_kl(plain(original), plain(model), target.trajectories.heldout, tokenizer, config)
    return 1.0 - kl / target.kl_reference


def stack_bakes(model: nn.Module, tokenizer, prompt: str, inputs: Sequence[str] | None,
                config: BakingConfig, rounds: int) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Bake the same prompt ``rounds`` times, each time towards the ORIGINAL prompted model.

    Each round trains a fresh adapter on the previous round's merged model, against the same teacher
    (the original with the prompt) and the same trajectories; the row records the strength measured
    against the original next to the spec's ``S_N = 1 - 0.5^N`` and to ``1 - (1 - S_1)^N`` compounded
    from round one. In target mode each bake closes ``target_strength`` of the gap left by the rounds
    before it, so the row's ``target`` is ``1 - (1 - target_strength)^N`` (the spec's S_N for a half-bake)
    and ``within_tolerance`` says whether the measured strength is within ``strength_tolerance`` of it.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    original = frozen_copy(model)
    target = prompt_target(original, tokenizer, prompt, inputs, config)
    rows: list[dict[str, Any]] = []
    for n in range(1, rounds + 1):
        result = bake_prompt(model, tokenizer, prompt, None, config, teacher=original, reference=original,
                             trajectories=target.trajectories)
        model = result.merge()
        first = rows[0]["measured_strength"] if rows else result.strength
        expected = 1.0 - (1.0 - config.target_strength) ** n if config.mode == "target_strength" else None
        rows.append({
            "round": n,
            "measured_strength": result.strength,
            "spec_prediction": 1.0 - 0.5 ** n,
            "target": expected,
            "within_tolerance": None if expected is None else within_tolerance(
                result.strength, expected, config.strength_tolerance),
            "compounded_from_round_1": 1.0 - (1.0 - first) ** n,
            "bake_gap_closed": result.gap_closed,
            "lora_scale": result.lora_scale,
            "heldout_kl": result.kl_after,
            "kl_reference": result.kl_reference,
            "wall_time_s": result.wall_time_s,
        })
    return model, rows


def bake_sequence(model: nn.Module, tokenizer, prompts: Sequence[str], inputs: Sequence[str] | None,
                  config: BakingConfig) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Bake different prompts one after another (e.g. a tool prompt, then a persona).

    After each step every prompt's strength is measured against the original model, so the table
    shows whether a later bake keeps or erodes an earlier one.
    """
    if not prompts:
        raise ValueError("bake_sequence needs at least one prompt")
    original = frozen_copy(model)
    targets = [prompt_target(original, tokenizer, prompt, inputs, config) for prompt in prompts]
    rows: list[dict[str, Any]] = []
    for step, prompt in enumerate(prompts, start=1):
        result = bake_prompt(model, tokenizer, prompt, inputs, config)
        model = result.merge()
        rows.append({
            "step": step,
            "prompt": prompt,
            "kl_per_token": result.kl_reference,
            "bake_strength": result.strength,
            "bake_target_reached": result.target_reached,
            "strength_vs_original": {
                target.prompt: measured_strength(original, model, tokenizer, target, config) for target in targets
            },
        })
    return model, rows


def bake_together(model: nn.Module, tokenizer, prompts: Sequence[str], inputs: Sequence[str] | None,
                  config: BakingConfig, retain: Sequence[Trajectory] = ()) -> tuple[nn.Module, dict[str, Any]]:
    """Bake several prompts into one adapter: each prompt's trajectories are sampled from the original with
    that prompt, and all are trained on together (each teacher context holds its own prompt).

    On shared inputs, prompts baked one after another overwrite each other (the last bake wins); a joint
    bake finds one model for all of them. Returns the merged model and a record: the joint bake's report
    and each prompt's strength against the original (:func:`measured_strength`).
    """
    if not prompts:
        raise ValueError("bake_together needs at least one prompt")
    original = frozen_copy(model)
    targets = [prompt_target(original, tokenizer, prompt, inputs, config) for prompt in prompts]
    pooled = TrajectorySet(
        train=[t for target in targets for t in target.trajectories.train],
        heldout=[t for target in targets for t in target.trajectories.heldout],
        calibration=[t for target in targets for t in target.trajectories.calibration])
    result = bake_prompt(model, tokenizer, "\n".join(prompts), None, config, trajectories=pooled, retain=retain)
    report = result.report()
    model = result.merge()
    return model, {"joint": {key: report[key] for key in (
                       "kl_reference", "kl_after", "strength", "target_reached", "lora_scale", "history",
                       "train_trajectories", "heldout_trajectories", "retained_sequences", "wall_time_s")},
                   "strengths": {target.prompt: measured_strength(original, model, tokenizer, target, config)
                                 for target in targets},
                   "kl_per_token": {target.prompt: target.kl_reference for target in targets}}


def pursue_prompt(model: nn.Module, tokenizer, prompt: str, inputs: Sequence[str] | None,
                  config: BakingConfig, rounds: int) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Prompt pursuit: bake, re-prompt the baked model with the same prompt, bake that, ``rounds`` times.

    Unlike stacking, the teacher moves: round k imitates the round k-1 model WITH the prompt, so the
    model can go past the original prompted behaviour; ``strength_vs_original`` shows where it stands.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    original = frozen_copy(model)
    target = prompt_target(original, tokenizer, prompt, inputs, config)
    rows: list[dict[str, Any]] = []
    for n in range(1, rounds + 1):
        result = bake_prompt(model, tokenizer, prompt, inputs, config)
        model = result.merge()
        rows.append({
            "round": n,
            "bake_strength": result.strength,
            "kl_prompted_vs_unprompted_before": result.kl_reference,
            "strength_vs_original": measured_strength(original, model, tokenizer, target, config),
        })
    return model, rows
