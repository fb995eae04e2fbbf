"""The spec's thresholds at their boundaries: a value just under and just over gives missed and met in the
spec's direction (> vs >=, < vs <=), through the functions the phases build their criteria with.

The thresholds and directions below are copied from the spec (shared/spec/004_*.txt, 000_*.txt), not
read from the code, so a changed number or an inverted comparison in the code fails here.
"""
import math

import pytest
import torch

from forge.criteria import criteria_line, criterion, describe, is_met, missed, verdict

BELOW, AT, ABOVE = "below", "at", "above"
# Which side of the threshold meets it, per direction.
MET_ON = {">": {ABOVE}, ">=": {AT, ABOVE}, "<": {BELOW}, "<=": {BELOW, AT}}


def around(threshold: float) -> dict[str, float]:
    """The nearest floats below and above ``threshold``, and the threshold itself."""
    return {BELOW: math.nextafter(threshold, -math.inf), AT: threshold, ABOVE: math.nextafter(threshold, math.inf)}


def assert_boundary(met_of, threshold: float, direction: str) -> None:
    """``met_of(value)`` is met exactly on the sides ``direction`` allows."""
    for side, value in around(threshold).items():
        assert met_of(value) is (side in MET_ON[direction]), (side, value, direction, threshold)


@pytest.mark.parametrize("direction", [">", ">=", "<", "<="])
def test_is_met_compares_in_the_given_direction(direction):
    assert_boundary(lambda value: is_met(value, direction, 0.3), 0.3, direction)


def test_missing_or_non_finite_values_are_never_met_and_unknown_directions_refused():
    for direction in MET_ON:
        assert not is_met(None, direction, 0.0) and not is_met(math.nan, direction, 0.0)
    assert not is_met(math.inf, ">", 0.0) and not is_met(-math.inf, "<", 0.0)
    with pytest.raises(ValueError, match="unknown direction '=>'"):
        is_met(1.0, "=>", 0.0)


def test_a_record_says_what_was_required_and_missed_lists_the_misses():
    records = {"b": criterion(0.05, ">", 0.1), "a": criterion(0.2, ">", 0.1), "c": criterion(math.nan, "<", 0.1)}
    assert records["b"] == {"value": 0.05, "direction": ">", "threshold": 0.1, "required": "> 0.1", "met": False}
    assert missed(records) == ["b", "c"]
    assert describe("b", records["b"]) == "b = 0.05 (required > 0.1): missed"


def test_a_criterion_without_a_value_is_missed_as_not_measured():
    record = criterion(None, ">", 0.1)  # e.g. GSM8K accuracy without a data folder
    assert not record["met"] and missed({"gsm8k_acc": record}) == ["gsm8k_acc"]
    assert verdict(record) == "missed (not measured)" and verdict(criterion(0.2, ">", 0.1)) == "met"
    assert describe("gsm8k_acc", record) == "gsm8k_acc = None (required > 0.1): missed (not measured)"


def test_a_phase_line_counts_the_met_criteria_and_shows_each_verdict():
    records = {"at": criterion(0.1, ">", 0.1), "above": criterion(0.11, ">", 0.1), "none": criterion(None, "<", 1.0)}
    assert criteria_line(records) == ("spec criteria 1 of 3 met: above = 0.11 (required > 0.1): met; at = 0.1 "
                                      "(required > 0.1): missed; none = None (required < 1): missed (not measured)")
    # A value measured on a sample of items shows its interval; the verdict still compares the value.
    sampled = criterion(-0.04, ">=", 0.0, interval=[-0.1, 0.02])
    assert sampled["interval"] == [-0.1, 0.02] and not sampled["met"]
    assert describe("change", sampled) == "change = -0.04 [-0.1, 0.02] (required >= 0): missed"


# ---------------------------------------------------------------------------------------- Phase 1

@pytest.mark.parametrize("name,field,threshold,direction", [
    ("behaviour_diversity", "behaviour_diversity", 0.3, ">="),  # validate_diversity raises if < 0.3
    ("halting_diversity", "halting_steps_spread", 2.0, ">"),
    ("memory_diversity", "memory_spread", 0.3, ">"),
    ("speed_diversity_ms", "forward_ms_spread", 10.0, ">"),
])
def test_cognate_diversity_criteria_at_the_spec_thresholds(name, field, threshold, direction):
    from forge.config import CognatePhaseConfig
    from forge.phases.cognate import diversity_criteria

    report = {"behaviour_diversity": 1.0, "halting_steps_spread": 5.0, "memory_spread": 1.0,
              "forward_ms_spread": 50.0, "threshold": CognatePhaseConfig().diversity_threshold}
    assert_boundary(lambda value: diversity_criteria({**report, field: value})[name]["met"], threshold, direction)


def test_the_halting_criterion_says_when_the_models_act_steps_put_it_out_of_reach():
    from forge.phases.cognate import diversity_criteria

    report = {"behaviour_diversity": 1.0, "halting_steps_spread": 0.97, "memory_spread": 1.0,
              "forward_ms_spread": 50.0, "threshold": 0.3}
    # act_max_steps 2 (the tiny preset's): a model halts after 1 or 2 steps, so the spread is at most 1.
    tiny = diversity_criteria({**report, "halting_steps_spread_limit": 1})["halting_diversity"]
    assert not tiny["met"] and "at most 2 ACT steps" in tiny["out_of_reach"]
    assert describe("halting_diversity", tiny).endswith(
        "missed (out of reach here: the models halt after at most 2 ACT steps (act_max_steps), so their mean "
        "halting steps differ by at most 1)")
    # act_max_steps 3 still cannot pass 2 (the spread is at most 2); 4 (gtx1660, cluster) can, so no note.
    assert "out_of_reach" in diversity_criteria({**report, "halting_steps_spread_limit": 2})["halting_diversity"]
    reachable = diversity_criteria({**report, "halting_steps_spread_limit": 3})["halting_diversity"]
    assert "out_of_reach" not in reachable and describe("h", reachable).endswith(": missed")
    # The note never turns a met value into a miss: the verdict compares the value.
    assert criterion(2.5, ">", 2.0, out_of_reach="why")["met"]


def test_cognate_gsm8k_criterion_is_model_1s_scoreboard_accuracy_at_the_spec_threshold():
    from forge.config import PipelineConfig
    from forge.phases.cognate import scored_criteria

    config = PipelineConfig()
    first, second = (spec.name for spec in config.cognate.models[:2])
    figure = lambda value: {"value": value, "low": value - 0.1, "high": value + 0.1, "n": 50}  # noqa: E731
    met_of = lambda value: scored_criteria(config, {first: {"task_accuracy/gsm8k": figure(value)},  # noqa: E731
                                                    second: {"task_accuracy/gsm8k": figure(1.0)}})["gsm8k_acc"]["met"]
    assert_boundary(met_of, 0.10, ">")  # assert final_metrics["gsm8k_acc"] > 0.10 (Model 1's)
    # Not measured (no data folder: no GSM8K row): missed, with no value.
    assert scored_criteria(config, {first: {"task_accuracy/synthetic_reasoning": figure(1.0)}})["gsm8k_acc"] == {
        "value": None, "direction": ">", "threshold": 0.1, "required": "> 0.1", "met": False}


def test_cognate_easy_criteria_are_each_models_interval_above_a_guess_on_the_same_items():
    from forge.config import PipelineConfig
    from forge.phases.cognate import scored_criteria

    config = PipelineConfig()
    names = [spec.name for spec in config.cognate.models]
    guess = 0.2458

    def easy(low: float, with_guess: bool = True) -> dict:
        return {"value": low + 0.1, "low": low, "high": low + 0.2, "n": 90,
                **({"guess_accuracy": guess} if with_guess else {})}

    # Issue 18: "clearly above chance" is the interval's lower end above the guess, not the accuracy itself.
    met_of = lambda low: scored_criteria(config, {name: {"task_accuracy/taskworld_easy": easy(low)}  # noqa: E731
                                                  for name in names})[f"easy_accuracy_low_{names[-1]}"]["met"]
    assert_boundary(met_of, guess, ">")
    criteria = scored_criteria(config, {names[0]: {"task_accuracy/taskworld_easy": easy(0.3)},
                                        names[1]: {"task_accuracy/taskworld_easy": easy(0.2)}})
    assert criteria[f"easy_accuracy_low_{names[0]}"]["met"] and not criteria[f"easy_accuracy_low_{names[1]}"]["met"]
    assert criteria[f"easy_accuracy_low_{names[1]}"]["required"] == f"> {guess:g}"
    # A model not scored on the task (a data folder's scoreboard), or a figure without a guess: no criterion.
    assert f"easy_accuracy_low_{names[2]}" not in criteria
    assert scored_criteria(config, {names[0]: {"task_accuracy/taskworld_easy": easy(0.3, False)}}).keys() == {
        "gsm8k_acc"}


# ---------------------------------------------------------------------------------------- Phase 2

@pytest.mark.parametrize("name,threshold,direction", [
    ("improvement_over_generation0", 0.20, ">="),  # assert improvement >= 0.20
    ("parent_diversity", 0.3, ">"),  # assert diversity > 0.3
    ("champion_beats_best_parent", 0.0, ">"),  # a merge is worth handing on only above every parent
])
def test_evomerge_criteria_at_the_spec_thresholds(name, threshold, direction):
    from forge.merge.evolve import EvoMergeConfig
    from forge.phases.evomerge import evomerge_criteria

    values = {"improvement_over_generation0": 1.0, "champion_beats_best_parent": 1.0, "parent_diversity": 1.0}

    def met_of(value):
        measured = {**values, name: value}
        return evomerge_criteria(measured["improvement_over_generation0"], measured["champion_beats_best_parent"],
                                 measured["parent_diversity"], EvoMergeConfig())[name]["met"]

    assert_boundary(met_of, threshold, direction)


def test_evomerge_stops_early_only_above_the_spec_improvement():
    from forge.merge.evolve import EvoMergeConfig, stop_reason

    assert EvoMergeConfig().early_stop_improvement == 0.30  # spec: if improvement > 0.30: stop
    # 0.25 is exact in binary, so generation 0 at 4.0 puts the boundary at exactly 5.0.
    config = EvoMergeConfig(early_stop_improvement=0.25, max_generations=50)
    assert_boundary(lambda best: stop_reason([4.0, best], config) == "target_improvement", 5.0, ">")


# ---------------------------------------------------------------------------------------- Phase 3

def _quietstar(**changes):
    from forge.phases.quietstar import quietstar_criteria
    from forge.quietstar.format_training import FormatBakeConfig

    measured = {"before": 0.25, "after": 0.5, "usage": 0.9, "coherence": 0.9, "format": 0.95, "examples": 25000,
                "removed": 0.0}
    measured.update(changes)
    stages = {"before": {"taskworld_accuracy": measured["before"]},
              "step2": {"taskworld_accuracy": measured["after"], "taskworld_thinking_usage": measured["usage"],
                        "taskworld_accuracy_no_thinking": measured["removed"]}}
    return quietstar_criteria(stages, measured["coherence"], measured["format"], FormatBakeConfig().accuracy_threshold,
                              measured["examples"])


@pytest.mark.parametrize("name,measured,threshold,direction", [
    ("coherence", "coherence", 0.6, ">"),
    ("thinking_usage", "usage", 0.7, ">"),
    ("format_baking_converged", "format", 0.85, ">="),  # assert final_accuracy >= 0.85
    ("accuracy_above_phase2", "after", 0.25, ">"),  # gsm8k_acc > phase2's (0.25 here)
    ("thoughts_ablation", "after", 0.02, ">"),  # accuracy with thoughts minus with them removed (0 here) > 0.02
])
def test_quietstar_criteria_at_the_spec_thresholds(name, measured, threshold, direction):
    assert_boundary(lambda value: _quietstar(**{measured: value})[name]["met"], threshold, direction)


def test_quietstar_needs_the_spec_count_of_reasoning_examples():
    # assert total_examples >= 20000; a count is an integer, so its boundary is one example.
    short = _quietstar(examples=19_999)["reasoning_examples"]
    assert not short["met"]
    assert _quietstar(examples=20_000)["reasoning_examples"]["met"]
    # A shortfall is the data's size, not a training result, and the record says so.
    assert "held 19999 examples (quietstar.num_examples" in short["out_of_reach"]
    assert "out_of_reach" not in _quietstar(examples=20_000)["reasoning_examples"]


def test_anti_theater_checks_pass_strictly_above_the_spec_thresholds():
    from forge.quietstar import rewards

    assert (rewards.DIVERGENCE_THRESHOLD, rewards.ABLATION_THRESHOLD, rewards.CORRELATION_THRESHOLD) == (0.3, 0.02, 0.5)
    # A measured drop of exactly 0.25 (one more correct item of four) passes only under a lower threshold.
    with_thoughts, without = torch.tensor([1, 1, 0, 0]), torch.tensor([1, 0, 0, 0])
    assert rewards.ablation_drop(with_thoughts, without).value == 0.25
    assert_boundary(lambda threshold: rewards.ablation_drop(with_thoughts, without, threshold=threshold).passed,
                    0.25, "<")


# ---------------------------------------------------------------------------------------- Phase 4

@pytest.mark.parametrize("name,threshold,direction", [
    ("compression_ratio", 6.0, ">="),  # tiny models: min_compression 6.0
    ("accuracy_drop", 0.10, "<"),
    ("inference_speedup", 2.0, ">="),
])
def test_bitnet_criteria_at_the_spec_thresholds(name, threshold, direction):
    from forge.quant.config import compression_config
    from forge.quant.run import bitnet_criteria

    assert compression_config("tiny").target_compression == 6.0
    assert all(compression_config(size).target_compression == 8.0 for size in ("small", "medium", "large"))
    values = {"compression_ratio": 10.0, "accuracy_drop": 0.0, "inference_speedup": 3.0}

    def met_of(value):
        measured = {**values, name: value}
        return bitnet_criteria(measured["compression_ratio"], compression_config("tiny").target_compression,
                               measured["accuracy_drop"], measured["inference_speedup"])[name]["met"]

    assert_boundary(met_of, threshold, direction)


def test_the_speed_criterion_is_out_of_reach_when_the_replaced_layers_are_less_than_half_the_forward():
    from forge.quant.run import bitnet_criteria

    def speed(limit):
        return bitnet_criteria(10.0, 6.0, 0.0, 0.6, limit)["inference_speedup"]

    below = speed(1.99)  # the replaced layers take just under half the float forward's time
    assert not below["met"] and "take 50% of the float forward's time" in below["out_of_reach"]
    assert "1.99x at most" in below["out_of_reach"]
    assert "out_of_reach" not in speed(2.0)  # free layers would just reach 2x: in reach, missed as measured
    assert "out_of_reach" not in speed(None) and not speed(2.0)["met"]


# ---------------------------------------------------------------------------------------- Phase 6

@pytest.mark.parametrize("name,threshold", [
    ("a_cycle_improvement", 0.10),  # SWE-Bench score improves by >= 10% from baseline
    ("b_cycle_improvement", 0.05),  # aggregate benchmark score improves by >= 5% from baseline
    ("baking_strength", 0.95),  # half-baking converges to >= 95% strength
    ("heldout_not_worse_than_input", 0.0),  # issue 19: the model handed on scores at least its input held out
])
def test_tool_persona_criteria_at_the_spec_thresholds(name, threshold):
    from forge.phases.tool_persona import tool_persona_criteria

    values = {"a_cycle_improvement": 0.5, "b_cycle_improvement": 0.5, "baking_strength": 1.0,
              "heldout_not_worse_than_input": 0.1}

    def met_of(value):
        measured = {**values, name: value}
        return tool_persona_criteria(True, measured["a_cycle_improvement"], measured["b_cycle_improvement"],
                                     measured["baking_strength"], measured["heldout_not_worse_than_input"])[name]["met"]

    assert_boundary(met_of, threshold, ">=")


def test_tool_persona_needs_convergence_and_both_cycles_measured():
    from forge.abcycles.driver import spec_strength
    from forge.phases.tool_persona import tool_persona_criteria

    assert not tool_persona_criteria(False, 0.5, 0.5, 1.0, 0.0)["converged"]["met"]
    assert not tool_persona_criteria(True, 0.5, None, 1.0, 0.0)["b_cycle_improvement"]["met"]  # B never ran
    # Four half-bakes over both cycles give 93.75%, five 96.875%: the spec's 95% needs five.
    assert [tool_persona_criteria(True, 0.5, 0.5, spec_strength(n), 0.0)["baking_strength"]["met"]
            for n in (4, 5)] == [False, True]


def test_self_prompt_counts_tell_the_models_own_from_the_fallbacks():
    from forge.abcycles.driver import IterationRecord
    from forge.phases.tool_persona import self_prompt_counts

    def record(cycle, origins):
        proposals = [{"prompt": f"p{i}", "origin": origin, "score": 0.0} for i, origin in enumerate(origins)]
        return IterationRecord(cycle=cycle, iteration=0, cycle_iteration=0, incumbent={}, proposals=proposals,
                               winner_index=0, winner_score=0.0, improvement=0.0, plateaued=True, half_baked=False,
                               half_bake_count=0, baking_strength_spec=0.0, baking_strength_measured=None,
                               best_score=0.0, lock_in=None, regression=None, mode="alternating", next_cycle=None,
                               iteration_s=0.0, elapsed_s=0.0)

    history = [record("A", ["mutation:insert"] * 4), record("B", ["self:t=0.8", "fallback:human", "fallback:human"]),
               record("B", ["self:t=0.6", "self:t=1.0"])]
    assert self_prompt_counts(history) == {"proposed": 5, "model_written": 3, "fallback": 2}
