"""Configuration of a prompt bake (Bhargava et al., "Prompt Baking", arXiv 2409.13697)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

# Named strengths accepted by the CLI. Mode "target_strength": the share of the held-out KL the bake removes
# ("half" closes half the gap, so stacked half-bakes follow the spec's S_N = 1 - 0.5^N; "full" is the whole
# schedule, the update scaled down only where that comes closer to 1 on the calibration inputs). Mode "epochs":
# the fraction of the full schedule that is run (the spec's 1.5 of 3 epochs, which measured 96-99.8% strength
# on the benchmark models). What a bake achieves is always measured.
STRENGTH_FRACTIONS = {"full": 1.0, "half": 0.5}


@dataclass
class BakingConfig:
    """How to sample trajectories, train the LoRA student and measure what took."""

    lora_r: int = 16  # LoRA rank (spec: 16)
    lora_alpha: int = 32  # LoRA scaling numerator (scale = alpha / r)
    target_modules: tuple[str, ...] | None = None  # module names to adapt; None: every attention/MLP linear
    learning_rate: float = 5e-4  # AdamW learning rate of the LoRA weights (spec: 5e-4)
    weight_decay: float = 0.0  # AdamW weight decay on the LoRA weights
    full_epochs: float = 3.0  # length of the full schedule the LR follows (spec: 3 epochs)
    num_epochs: float = 3.0  # where to stop at the latest (epochs mode: 1.5 of 3 is the spec's half-bake)
    lr_schedule: Literal["constant", "cosine"] = "cosine"  # cosine decays to 0 at full_epochs
    warmup_steps: int = 0  # linear LR warm-up steps
    batch_size: int = 8  # trajectories per optimizer step
    max_grad_norm: float = 1.0  # gradient clipping; 0 disables it
    samples_per_input: int = 4  # trajectories sampled from the prompted teacher per input
    max_new_tokens: int = 32  # length of each sampled trajectory (fewer if EOS is sampled)
    temperature: float = 1.0  # sampling temperature; 0 samples greedily
    unconditional_inputs: int = 32  # with no inputs: this many empty inputs (trajectories from the prompt alone)
    heldout_fraction: float = 0.2  # share of the inputs kept out of training to measure strength
    kl_chunk_tokens: int = 256  # generated tokens per chunk of full-vocabulary logits in the KL
    seed: int = 0  # seeds the split, the sampling, the LoRA init and the shuffling
    mode: Literal["target_strength", "epochs"] = "target_strength"  # target_strength: train until the
    # calibration strength reaches target_strength, then scale the LoRA update to hit it; epochs: stop at num_epochs
    target_strength: float = 1.0  # target mode: share of the KL gap the bake closes (0.5 = half-bake; 1 = full)
    strength_tolerance: float = 0.1  # target mode: a held-out strength further than this from the target is missed
    calibration_fraction: float = 0.2  # target mode: share of inputs the LoRA scale is chosen on (not trained on,
    # not measured on)
    retention_weight: float = 1.0  # weight, beside the bake's KL, of the KL to the unbaked model on retained
    # sequences (skills the bake must not erase); used only when a bake is given sequences to retain
    retention_target: Literal["unbaked", "reference"] = "unbaked"  # what a retained sequence's completion is held
    # to: the unbaked model's next-token distributions (KL), or the completion's own tokens (cross-entropy), which
    # keeps the answers without pinning every other probability the bake may move

    def __post_init__(self) -> None:
        if self.lora_r < 1:
            raise ValueError(f"lora_r must be >= 1, got {self.lora_r}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.full_epochs <= 0 or self.num_epochs <= 0:
            raise ValueError(f"full_epochs and num_epochs must be > 0, got {self.full_epochs}, {self.num_epochs}")
        if self.num_epochs > self.full_epochs:
            raise ValueError(
                f"num_epochs ({self.num_epochs}) is past the end of the schedule (full_epochs={self.full_epochs}); "
                "raise full_epochs to bake longer"
            )
        if self.batch_size < 1 or self.samples_per_input < 1 or self.max_new_tokens < 1:
            raise ValueError("batch_size, samples_per_input and max_new_tokens must all be >= 1")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        if self.kl_chunk_tokens < 1:
            raise ValueError(f"kl_chunk_tokens must be >= 1, got {self.kl_chunk_tokens}")
        if self.retention_weight < 0:
            raise ValueError(f"retention_weight must be >= 0, got {self.retention_weight}")
        if self.retention_target not in ("unbaked", "reference"):
            raise ValueError(f"retention_target must be 'unbaked' or 'reference', got {self.retention_target!r}")
        if self.target_modules is not None:
            self.target_modules = tuple(self.target_modules)
        if self.mode not in ("target_strength", "epochs"):
            raise ValueError(f"mode must be 'target_strength' or 'epochs', got {self.mode!r}")
        if not 0.0 < self.target_strength <= 1.0:
            raise ValueError(f"target_strength must be in (0, 1], got {self.target_strength}")
        if not 0.0 < self.strength_tolerance < 1.0:
            raise ValueError(f"strength_tolerance must be in (0, 1), got {self.strength_tolerance}")
        if not 0.0 < self.calibration_fraction < 1.0 or self.calibration_fraction + self.heldout_fraction >= 1.0:
            raise ValueError(f"calibration_fraction must be in (0, 1) and leave inputs to train on beside "
                             f"heldout_fraction={self.heldout_fraction}, got {self.calibration_fraction}")

    def at_strength(self, strength: str | float) -> "BakingConfig":
        """A copy for "full", "half" or a float in (0, 1]: the target strength (target mode) or the
        fraction of the full schedule to run (epochs mode)."""
        value = strength_fraction(strength)
        if self.mode == "target_strength":
            return replace(self, target_strength=value, num_epochs=self.full_epochs)
        return replace(self, num_epochs=self.full_epochs * value)


def strength_fraction(strength: str | float) -> float:
    """Parse "full" | "half" | a number in (0, 1]: a target strength or a fraction of the schedule."""
    if isinstance(strength, str):
        key = strength.strip().lower()
        if key in STRENGTH_FRACTIONS:
            return STRENGTH_FRACTIONS[key]
        try:
            value = float(key)
        except ValueError:
            raise ValueError(
                f"strength {strength!r} is not 'full', 'half' or a number in (0, 1] (the target strength, or "
                "in epochs mode the fraction of the full schedule to run, e.g. 0.25)"
            ) from None
    else:
        value = float(strength)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"strength {value} must be in (0, 1]: it is the target strength, or in epochs mode the "
                         "fraction of the full schedule to run")
    return value
