"""Prompt baking (Bhargava et al., arXiv 2409.13697): make a model behave without a prompt as it did with it.

``bake_prompt`` trains a LoRA student to match the frozen prompted base on sampled trajectories and
measures the strength it reached; ``compose`` stacks, sequences and pursues bakes.
"""
from forge.baking.bake import (
    BakeResult,
    BakingError,
    EpochReport,
    NothingToBake,
    TrajectorySet,
    bake_prompt,
    base_weights_hash,
    export_merged,
    find_lora_targets,
    load_adapter,
    mean_kl,
    save_adapter,
    within_tolerance,
)
from forge.baking.compose import bake_sequence, bake_together, measured_strength, prompt_target, pursue_prompt, stack_bakes
from forge.baking.config import BakingConfig, strength_fraction
from forge.baking.trajectories import Trajectory, load_inputs, sample_trajectories

__all__ = [
    "BakeResult", "BakingConfig", "BakingError", "EpochReport", "NothingToBake", "Trajectory", "TrajectorySet",
    "bake_prompt", "bake_sequence", "bake_together", "base_weights_hash", "export_merged", "find_lora_targets", "load_adapter",
    "load_inputs", "mean_kl", "measured_strength", "prompt_target", "pursue_prompt", "sample_trajectories",
    "save_adapter", "stack_bakes", "strength_fraction", "within_tolerance",
]
