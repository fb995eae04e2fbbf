"""Target-strength baking on a model where the prompt matters: a half-bake closes half the KL gap, stacked
half-bakes follow S_N = 1 - 0.5^N, a bake off its target is reported as missed."""
from __future__ import annotations

import copy
import dataclasses
import random

import pytest
import torch

from benchmarks.scripts.bake_behaviour import PROMPT, build_models, document, pretrain, questions
from forge.baking import BakingConfig, NothingToBake, bake_prompt, mean_kl, stack_bakes, within_tolerance
from forge.baking.bake import _scale_to_target
from forge.baking.kl import ModelView, plain
from forge.data.tokenizer import train_bpe_tokenizer

# Small and fast; a large LR so that one epoch already passes a half-bake's target and the scale has to act.
CONFIG = BakingConfig(lora_r=4, lora_alpha=8, learning_rate=5e-3, max_new_tokens=8, samples_per_input=2)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pirate():
    """bake_behaviour.py's world: after the header ``style: pirate`` answers read ``arr, X matey!``."""
    torch.set_num_threads(1)
    tokenizer = train_bpe_tokenizer([document(random.Random(0)) for _ in range(300)], vocab_size=300)
    model = build_models(tokenizer, "gpt2")
    pretrain(model, tokenizer, steps=100, seed=2, batch=16)
    items = questions()
    random.Random(1).shuffle(items)
    return model, tokenizer, [question for question, _ in items[:20]]


def test_half_bake_measures_half_and_full_bake_is_the_whole_schedule(pirate):
    model, tokenizer, inputs = pirate
    half = bake_prompt(copy.deepcopy(model), tokenizer, PROMPT, inputs, CONFIG.at_strength("half"))
    assert half.kl_reference > 0.5  # the prompt changes the predictions (nats per token): strength is not noise
    assert half.config.target_strength == 0.5 and half.config.num_epochs == CONFIG.full_epochs
    # Training passed the target on the calibration inputs, so the update was scaled down to meet it.
    assert half.history[-1].calibration_strength >= 0.5 and half.lora_scale < 1.0
    assert half.scale_search[0] == {"scale": 1.0, "calibration_strength": half.history[-1].calibration_strength}
    # The calibration strength at the scale applied is the one the search ended closest to the target with.
    assert half.calibration_strength == pytest.approx(0.5, abs=0.01)
    assert half.report()["calibration_strength"] == half.calibration_strength
    # Measured on held-out inputs, neither trained on nor used to choose the scale.
    assert 0.4 <= half.strength <= 0.6 and half.target_reached
    assert half.strength == pytest.approx(half.gap_closed)  # no separate reference: the same measure
    assert half.extra["calibration_tokens"] > 0 and half.extra["heldout_tokens"] > 0

    full = bake_prompt(copy.deepcopy(model), tokenizer, PROMPT, inputs, CONFIG.at_strength("full"))
    assert [row.epoch for row in full.history] == [1.0, 2.0, 3.0]  # target 1 is never passed: the whole schedule
    # The factor kept is the one closest to the target on the calibration inputs: here the strongest.
    assert full.lora_scale == max(full.scale_search, key=lambda row: row["calibration_strength"])["scale"]
    assert full.strength > half.strength + 0.2
    assert full.target_reached == (full.strength >= 0.9)  # full: target 1.0, tolerance 0.1


def test_a_bake_just_outside_the_tolerance_is_reported_missed(pirate):
    model, tokenizer, inputs = pirate
    half = bake_prompt(copy.deepcopy(model), tokenizer, PROMPT, inputs, CONFIG.at_strength("half"))
    off = abs(half.gap_closed - 0.5)
    assert off > 0  # held-out and calibration inputs differ, so the held-out value is never exactly the target
    at = dataclasses.replace(half, config=dataclasses.replace(half.config, strength_tolerance=off + 1e-9))
    below = dataclasses.replace(half, config=dataclasses.replace(half.config, strength_tolerance=off - 1e-9))
    assert at.target_reached and not below.target_reached
    # The console line says which: the band and the verdict beside the measured strength.
    assert at.describe_strength().startswith(f"strength {half.strength:.3f} (target 0.5 +/- {off + 1e-9:g}: reached;")
    assert f": missed; calibration {half.calibration_strength:.3f} at LoRA scale" in below.describe_strength()
    assert within_tolerance(0.6, 0.5, 0.1) and within_tolerance(0.4, 0.5, 0.1)
    assert not within_tolerance(0.6001, 0.5, 0.1) and not within_tolerance(0.3999, 0.5, 0.1)
    epochs = bake_prompt(copy.deepcopy(model), tokenizer, PROMPT, inputs, dataclasses.replace(CONFIG, mode="epochs"))
    assert epochs.target_reached is None and epochs.describe_strength() == f"strength {epochs.strength:.3f}"


def test_an_update_that_makes_the_model_worse_is_not_applied(pirate):
    model, tokenizer, inputs = pirate
    baked = bake_prompt(copy.deepcopy(model), tokenizer, PROMPT, inputs, CONFIG.at_strength("full"))
    student = baked.model
    with torch.no_grad():  # the trained update, reversed: it moves away from the prompted model
        for name, param in student.named_parameters():
            if "lora_B" in name:
                param.neg_()
    teacher = ModelView(student, student.disable_adapter)
    calibration = baked.trajectories.calibration
    kl_start = mean_kl(teacher, teacher, calibration, tokenizer, baked.config)
    scale, tries = _scale_to_target(student, teacher, calibration, tokenizer, baked.config, kl_start)
    assert tries[0]["scale"] == 1.0 and tries[0]["calibration_strength"] < 0
    assert scale == 0.0 and {row["scale"] for row in tries} == {1.0, 0.75, 0.5, 0.25, 0.0}
    assert mean_kl(teacher, plain(student), calibration, tokenizer, baked.config) == pytest.approx(kl_start)


def test_stacked_half_bakes_follow_the_spec(pirate):
    model, tokenizer, inputs = pirate
    _, rows = stack_bakes(copy.deepcopy(model), tokenizer, PROMPT, inputs, CONFIG.at_strength("half"), rounds=2)
    assert [row["target"] for row in rows] == [0.5, 0.75]
    # Measured against the original model on held-out inputs, within 0.1 of S_N = 1 - 0.5^N.
    assert 0.4 <= rows[0]["measured_strength"] <= 0.6 and 0.65 <= rows[1]["measured_strength"] <= 0.85
    assert all(row["within_tolerance"] for row in rows)
    # Round 2 starts half-way, so it closes half of what is left: about a quarter of the original gap.
    assert 0.4 <= rows[1]["bake_gap_closed"] <= 0.6


def test_target_mode_refuses_what_it_cannot_measure(pirate):
    model, tokenizer, inputs = pirate
    with pytest.raises(ValueError, match="at least 3 inputs"):
        bake_prompt(copy.deepcopy(model), tokenizer, PROMPT, inputs[:2], CONFIG.at_strength("half"))
    with pytest.raises(ValueError, match="mode must be"):
        BakingConfig(mode="steps")
    with pytest.raises(ValueError, match="target_strength must be in"):
        BakingConfig(target_strength=1.5)
    # With attention and position embeddings zeroed a token never sees its context, nor the prompt.
    blind = copy.deepcopy(model)
    torch.nn.init.zeros_(blind.transformer.wpe.weight)
    for block in blind.transformer.h:
        torch.nn.init.zeros_(block.attn.c_proj.weight)
        torch.nn.init.zeros_(block.attn.c_proj.bias)
    keys = set(blind.state_dict())
    with pytest.raises(NothingToBake, match="nothing to bake"):
        bake_prompt(blind, tokenizer, PROMPT, inputs, CONFIG.at_strength("half"))
    assert set(blind.state_dict()) == keys
