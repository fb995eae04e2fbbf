"""Behaviour diversity (forge.pretrain.diversity): the spread's definition on known values, the combination of profile
groups, and the measured profile of real (untrained) Cognate models."""
import pytest
import torch

from forge.pretrain.diversity import behaviour_profiles, profile_diversity, relative_spread
from forge.models import CognateConfig, CognateForCausalLM


def test_the_spread_is_the_mean_pairwise_difference_over_the_mean():
    assert relative_spread([2.0, 2.0, 2.0]) == 0.0
    assert relative_spread([0.0, 0.0]) == 0.0
    # pairs: |1-2| = 1, |1-3| = 2, |2-3| = 1 -> mean 4/3; mean value 2 -> 2/3
    assert relative_spread([1.0, 2.0, 3.0]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="at least two"):
        relative_spread([1.0])


def test_each_group_counts_once_and_only_shared_features_count():
    profiles = {
        "a": {"perplexity": {"x": 10.0, "y": 10.0, "only_a": 1.0}, "halting": {"mean": 1.0}},
        "b": {"perplexity": {"x": 30.0, "y": 10.0}, "halting": {"mean": 1.0}},
    }
    result = profile_diversity(profiles)
    assert result["groups"]["perplexity"]["features"] == {"x": pytest.approx(1.0), "y": 0.0}
    assert result["groups"]["perplexity"]["spread"] == pytest.approx(0.5)
    assert result["diversity"] == pytest.approx(0.25)  # (0.5 + 0) / 2 groups, not / 3 features
    # One more group (per-task accuracy, say) is one more entry per model.
    for name, accuracy in (("a", 0.2), ("b", 0.6)):
        profiles[name]["task_accuracy"] = {"add": accuracy}
    assert profile_diversity(profiles)["diversity"] == pytest.approx((0.5 + 0 + 1.0) / 3)


def _model(slots, threshold, seed=0):
    torch.manual_seed(seed)
    return CognateForCausalLM(CognateConfig(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        sliding_window=8, ltm_slots=slots, memory_dim=8, memory_chunk_size=8, act_max_steps=3, trm_refinements=1,
        act_threshold=threshold, max_position_embeddings=64, pad_token_id=0, bos_token_id=None, eos_token_id=None))


def test_profiles_measure_perplexity_per_dataset_halting_memory_and_speed():
    data = torch.randint(1, 50, (4, 32), generator=torch.Generator().manual_seed(0))
    same = {"a": _model(16, 0.9), "b": _model(16, 0.9)}
    profiles, figures = behaviour_profiles(same, {"d1": data[:2], "d2": data[2:]}, data[:2], repeats=1)
    assert set(profiles["a"]) == {"heldout_perplexity", "halting_steps", "memory_use", "speed"}
    assert set(profiles["a"]["heldout_perplexity"]) == {"d1", "d2"}
    assert profiles["a"]["heldout_perplexity"] == profiles["b"]["heldout_perplexity"]  # the same weights
    assert profiles["a"]["memory_use"]["read_change"] > 0  # 32 tokens, chunks of 8: later chunks read writes
    assert figures["a"]["tokens_per_s"] == pytest.approx(64 / (figures["a"]["forward_ms"] / 1000))
    # The same weights with another capacity and threshold behave differently in memory and halting.
    other = {"a": same["a"], "c": _model(64, 0.3)}
    profiles, _ = behaviour_profiles(other, {"d1": data}, data[:2], repeats=1)
    spreads = profile_diversity({n: {g: p for g, p in prof.items() if g != "speed"} for n, prof in profiles.items()})
    assert spreads["groups"]["memory_use"]["spread"] > 0 and spreads["groups"]["halting_steps"]["spread"] > 0
