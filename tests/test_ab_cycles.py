"""The Phase 6 A/B driver's control logic, driven by scripted hooks whose scores follow a fixed table.

The hooks stand in for the phase's models: each iteration's evaluation returns a row of the table, so
every decision of the driver (plateau, switch, convergence, oscillation, lock-in, resume) is pinned.
"""
import dataclasses
import json
import types

import pytest

from benchmarks.tooluse import accuracy_intervals
from forge.abcycles.driver import (
    ABCycleConfig,
    ABCycleError,
    ABStateMismatchError,
    PairedScore,
    Proposal,
    last_checkpoint_iteration,
    plot_trajectory,
    run_ab_cycles,
    trajectory_figure,
)

PROMPTS = {"A": "Use tools to check your work.", "B": "I think step by step."}


class ScriptedHooks:
    """Hooks whose evaluation of iteration ``it`` is ``table[it]`` = [incumbent, variant 0, variant 1, ...]."""

    def __init__(self, table, *, fail_at=None, clock=None):
        self.table = table
        self.fail_at = fail_at  # iteration whose half_bake raises, as a crash would
        self.clock = clock  # a FakeClock the hooks advance, as real work takes time
        self.calls = []
        self.checkpoints = []

    def _tick(self):
        if self.clock is not None:
            self.clock.now += 10.0

    def propose(self, cycle, incumbent, iteration, n):
        self.calls.append(("propose", cycle, incumbent, iteration, n))
        self._tick()
        return [Proposal(f"{cycle}{iteration}-v{j}", f"mutation:{j}") for j in range(len(self.table[iteration]) - 1)]

    def evaluate(self, cycle, prompts, iteration):
        self.calls.append(("evaluate", cycle, list(prompts), iteration))
        self._tick()
        return list(self.table[iteration])

    def half_bake(self, cycle, prompt, iteration):
        self.calls.append(("half_bake", cycle, prompt, iteration))
        if iteration == self.fail_at:
            raise RuntimeError(f"simulated crash in iteration {iteration}")
        return 0.41 + 0.01 * iteration  # a "measured" strength, distinct from the spec's formula

    def full_bake(self, cycle, prompt, iteration):
        self.calls.append(("full_bake", cycle, prompt, iteration))
        return 0.97

    def checkpoint(self, iteration):
        self.checkpoints.append(iteration)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def run(tmp_path, table, name="state.json", hooks=None, log=None, clock=None, say=None, **config):
    # The scripted tables describe variant iterations; the initial half-bake has its own test.
    config.setdefault("half_bake_initial_tool_prompt", False)
    hooks = hooks or ScriptedHooks(table)
    kwargs = {"clock": clock} if clock is not None else {}
    result = run_ab_cycles(hooks, ABCycleConfig(**config), initial_prompts=PROMPTS, state_path=tmp_path / name,
                           log=log, say=say, **kwargs)
    return result, hooks


def test_plateau_switches_cycle_and_both_plateaued_converges(tmp_path):
    table = [
        [0.50, 0.52, 0.55, 0.51],  # A: +10% -> half-bake "A0-v1"
        [0.55, 0.551, 0.54],  # A: +0.18% < 0.5% -> plateau, switch to B
        [0.70, 0.75, 0.70],  # B: +7.1% -> half-bake (clears A's plateau: the model changed)
        [0.75, 0.752, 0.70],  # B: plateau -> back to A
        [0.55, 0.552, 0.50],  # A: plateau with no half-bake since B's -> converged
        [9.0, 9.9],  # never reached
    ]
    result, hooks = run(tmp_path, table, max_iterations=10, lock_in_after=None)
    assert [r.cycle for r in result.history] == ["A", "A", "B", "B", "A"]
    assert [r.plateaued for r in result.history] == [False, True, False, True, True]
    assert result.stop_reason == "converged" and result.converged
    assert result.history[-1].next_cycle is None
    # the incumbent is re-scored first, then each proposal; the winner becomes the incumbent
    assert hooks.calls[0] == ("propose", "A", PROMPTS["A"], 0, 4)
    assert hooks.calls[1] == ("evaluate", "A", [PROMPTS["A"], "A0-v0", "A0-v1", "A0-v2"], 0)
    assert hooks.calls[2] == ("half_bake", "A", "A0-v1", 0)
    assert hooks.calls[3] == ("propose", "A", "A0-v1", 1, 4)
    assert result.history[0].improvement == pytest.approx((0.55 - 0.50) / 0.50)
    assert [c[1:] for c in hooks.calls if c[0] == "half_bake"] == [("A", "A0-v1", 0), ("B", "B2-v0", 2)]
    # The prompts that go with each iteration's checkpoint.
    assert result.prompts_after(0) == {"A": "A0-v1", "B": PROMPTS["B"]}
    assert result.prompts_after(2) == {"A": "A0-v1", "B": "B2-v0"} == result.prompts_after(4)
    assert result.prompts_after(len(result.history) - 1) == result.incumbents
    assert result.incumbents == {"A": "A0-v1", "B": "B2-v0"}
    assert result.origins == {"A": "mutation:1", "B": "mutation:0"}
    assert result.scores == {"A": 0.55, "B": 0.75}
    assert result.iterations == {"A": 3, "B": 2}
    assert hooks.checkpoints == [0, 1, 2, 3, 4]


def test_keeps_improving_stops_at_max_iterations_with_spec_strengths(tmp_path):
    table = [[1.0 + 0.1 * i, 1.2 + 0.1 * i] for i in range(8)]  # every winner beats its incumbent by > 0.5%
    logged = []
    result, hooks = run(tmp_path, table, max_iterations=5, lock_in_after=None, log=logged.append)
    assert result.stop_reason == "max_iterations" and not result.converged
    assert len(result.history) == 5 and all(r.cycle == "A" and r.half_baked for r in result.history)
    assert [r.half_bake_count for r in result.history] == [1, 2, 3, 4, 5]
    assert [r.baking_strength_spec for r in result.history] == [0.5, 0.75, 0.875, 0.9375, 0.96875]
    assert [r.baking_strength_measured for r in result.history] == pytest.approx([0.41, 0.42, 0.43, 0.44, 0.45])
    assert result.strengths["A"] == {"last_bake": "half", "half_bakes_since_lock_in": 5, "spec": 0.96875,
                                     "measured": pytest.approx(0.45)}
    assert result.strengths["B"] == {"last_bake": None, "half_bakes_since_lock_in": 0, "spec": 0.0, "measured": None}
    # one record per iteration under the spec's names, then the final summary
    assert len(logged) == 6
    assert logged[0]["a_cycle/iteration"] == 0 and logged[0]["a_cycle/baking_strength"] == 0.5
    assert logged[0]["a_cycle/baseline_tool_use"] == 1.0 and logged[0]["a_cycle/variant_0_tool_use"] == 1.2
    assert logged[0]["a_cycle/best_score"] == pytest.approx(1.2)
    assert logged[0]["a_cycle/baking_strength_measured"] == pytest.approx(0.41)
    assert {"convergence/a_plateau", "convergence/b_plateau", "convergence/mode"} <= set(logged[0])
    assert logged[-1]["convergence/stop_reason"] == "max_iterations"
    # The A-cycle's score is named for what it measures: the tool-use benchmark unless SWE-bench is the fitness.
    assert logged[-1]["final/tool_use_fitness"] == pytest.approx(1.6)
    assert logged[-1]["final/total_improvement_tool_use"] == pytest.approx((1.6 - 1.0) / 1.0)
    assert not any("swe_bench" in key for record in logged for key in record)
    assert "final/aggregate_benchmark" not in logged[-1]  # B never ran: no score is invented for it
    handoff = result.handoff()
    assert handoff["phase"] == 6 and handoff["a_cycle_iterations"] == 5 and handoff["b_cycle_iterations"] == 0
    assert handoff["a_cycle_fitness"] == "tooluse" and handoff["tool_use_fitness"] == pytest.approx(1.6)
    assert "swe_bench_score" not in handoff
    assert [b["prompt"] for b in handoff["tool_prompts_baked"]] == [f"A{i}-v0" for i in range(5)]
    assert handoff["persona_prompts_baked"] == [] and handoff["aggregate_benchmark"] is None
    json.dumps(result.to_dict())  # the whole result is JSON


def test_a_variant_with_intervals_wins_only_when_its_paired_difference_is_above_zero(tmp_path):
    table = [
        # 0: the best point score's interval reaches 0 (within noise); the next best is just above 0 and wins
        [PairedScore(0.50, 0.0), PairedScore(0.60, 0.0), PairedScore(0.55, 1e-9), PairedScore(0.40, -0.1)],
        # 1: every variant's interval reaches 0: a plateau, though the best point score is +20%
        [PairedScore(0.55, 0.0), PairedScore(0.66, 0.0), PairedScore(0.60, -0.05)],
        # 2 (B): plain scores carry no interval: the point rule, as before
        [0.70, 0.75],
        [0.75, 0.751],
        [9.0, 9.9],
    ]
    logged, lines = [], []
    result, hooks = run(tmp_path, table, max_iterations=4, lock_in_after=None, log=logged.append, say=lines.append)
    first, second, persona = result.history[:3]
    assert (first.winner_index, first.winner_score, first.half_baked) == (1, 0.55, True)
    assert first.winner_difference_low == 1e-9 and first.improvement == pytest.approx(0.1)
    assert (second.winner_index, second.winner_score, second.plateaued, second.half_baked) == (0, 0.66, True, False)
    assert second.improvement == pytest.approx(0.2) and second.winner_difference_low == 0.0
    assert second.next_cycle == "B" and result.incumbents["A"] == "A0-v1"
    assert persona.half_baked and persona.winner_difference_low is None
    assert [c[1:] for c in hooks.calls if c[0] == "half_bake"] == [("A", "A0-v1", 0), ("B", "B2-v0", 2)]
    assert logged[1]["a_cycle/winner_difference_low"] == 0.0 and "b_cycle/winner_difference_low" not in logged[2]
    # The console's line per iteration says what was adopted, and why a better point score was not.
    assert lines[0] == ("iteration 0 (A, tool prompt): incumbent 0.500, best of 3 proposals 0.550 (+10.0%, paired "
                        "difference's lower bound +1e-09) -> adopted and half-baked (measured strength 0.410); next: A")
    assert lines[1] == ("iteration 1 (A, tool prompt): incumbent 0.550, best of 2 proposals 0.660 (+20.0%, paired "
                        "difference's lower bound +0) -> plateau: not better beyond noise; next: B")
    assert lines[2].startswith("iteration 2 (B, persona): incumbent 0.700, best of 1 proposal 0.750 (+7.1%) -> adopted")
    assert lines[3].endswith("-> plateau: gain under the plateau threshold; next: A") and len(lines) == 4


def test_paired_intervals_of_tool_use_rows_decide_at_the_boundary(tmp_path):
    """Real intervals (``accuracy_intervals``, 32 items): a variant that answers the same items (only more calls:
    the same correct row) or one item more is within noise; eight more, none fewer, is beyond it."""
    incumbent = [True] * 8 + [False] * 24
    same, one_more, eight_more = list(incumbent), [True] * 9 + [False] * 23, [True] * 16 + [False] * 16
    intervals = accuracy_intervals([incumbent, same, one_more, eight_more], seed=0)
    lows = [row["difference_interval"][0] for row in intervals]
    assert lows[:3] == [0.0, 0.0, 0.0] and lows[3] > 0
    fitness = [0.25, 0.35, 0.30, 0.50]  # the "same" row scores +40% on more tool calls alone
    scores = [PairedScore(f, low) for f, low in zip(fitness, lows)]
    result, hooks = run(tmp_path, [scores[:3]], max_iterations=1, lock_in_after=None)
    assert result.history[0].plateaued and not any(c[0] == "half_bake" for c in hooks.calls)  # no winner
    result, hooks = run(tmp_path, [scores], name="beyond.json", max_iterations=1, lock_in_after=None)
    assert result.history[0].winner_index == 2 and result.history[0].half_baked


def test_a_non_finite_interval_bound_is_refused(tmp_path):
    with pytest.raises(ABCycleError, match="non-finite"):
        run(tmp_path, [[PairedScore(0.5, 0.0), PairedScore(0.6, float("nan"))]], max_iterations=1)


def test_lock_in_full_bakes_after_three_half_bakes_and_resets_the_count(tmp_path):
    table = [[1.0 + 0.1 * i, 1.2 + 0.1 * i] for i in range(5)]
    result, hooks = run(tmp_path, table, max_iterations=5, lock_in_after=3)
    assert [c[1:] for c in hooks.calls if c[0] == "full_bake"] == [("A", "A2-v0", 2)]
    assert [r.lock_in is not None for r in result.history] == [False, False, True, False, False]
    assert result.history[2].lock_in == {"prompt": "A2-v0", "strength_measured": 0.97, "half_bakes": 3}
    assert [r.half_bake_count for r in result.history] == [1, 2, 3, 1, 2]
    # The spec's strength counts every half-bake; the lock-in resets only the count that triggers it.
    assert [r.baking_strength_spec for r in result.history] == [0.5, 0.75, 0.875, 0.9375, 0.96875]
    kinds = [(b["iteration"], b["kind"]) for b in result.bakes("A")]
    assert kinds == [(0, "half"), (1, "half"), (2, "half"), (2, "full"), (3, "half"), (4, "half")]
    assert result.half_bakes["A"] == 5
    assert result.strengths["A"]["last_bake"] == "half" and result.strengths["A"]["spec"] == 0.75


def test_strength_right_after_a_lock_in_is_the_full_bake(tmp_path):
    table = [[1.0, 1.2], [1.2, 1.5], [1.5, 1.8], [9.0, 9.9]]
    result, _ = run(tmp_path, table, max_iterations=3, lock_in_after=3)
    assert result.strengths["A"] == {"last_bake": "full", "half_bakes_since_lock_in": 0, "spec": 1.0,
                                     "measured": 0.97}
    assert result.handoff()["baking_strength"]["A"]["spec"] == 1.0


def test_wall_time_budget_stops_between_iterations(tmp_path):
    clock = FakeClock()
    table = [[1.0 + 0.1 * i, 1.2 + 0.1 * i] for i in range(10)]
    hooks = ScriptedHooks(table, clock=clock)  # each iteration costs 20 fake seconds
    result, _ = run(tmp_path, table, hooks=hooks, clock=clock, max_iterations=10, wall_time_budget_s=45.0,
                    lock_in_after=None)
    assert result.stop_reason == "budget"
    assert len(result.history) == 3  # 20 s and 40 s are under budget, 60 s is not
    assert [r.elapsed_s for r in result.history] == [20.0, 40.0, 60.0]
    assert result.elapsed_s == 60.0


def test_oscillation_goes_sequential_then_stops_after_both_plateau(tmp_path):
    table = [
        [0.50, 0.60],  # 0 A: half-bake
        [0.60, 0.601],  # 1 A: plateau, left at 0.60
        [0.70, 0.80],  # 2 B: half-bake
        [0.80, 0.801],  # 3 B: plateau -> A
        [0.50, 0.58],  # 4 A re-entered: incumbent 0.50 < 0.60 (-16.7%): regression -> sequential; A half-bakes
        [0.58, 0.581],  # 5 A: plateau -> B (the second of the sequence)
        [0.80, 0.90],  # 6 B: half-bake
        [0.90, 0.9001],  # 7 B: plateau -> sequence complete
        [1.0, 2.0],  # never reached
    ]
    result, _ = run(tmp_path, table, max_iterations=20, lock_in_after=None, oscillation_patience=1)
    assert [r.cycle for r in result.history] == ["A", "A", "B", "B", "A", "A", "B", "B"]
    assert result.stop_reason == "sequential_complete" and result.mode == "sequential"
    assert result.history[4].regression == {"iteration": 4, "cycle": "A", "exit_score": 0.60, "entry_score": 0.50,
                                            "relative_drop": pytest.approx(1 / 6)}
    assert [r.mode for r in result.history] == ["alternating"] * 4 + ["sequential"] * 4
    assert result.regressions == [result.history[4].regression]


def test_patience_tolerates_regressions_before_going_sequential(tmp_path):
    table = [
        [0.50, 0.60], [0.60, 0.601],  # 0-1 A: bake, plateau at 0.60
        [0.70, 0.80], [0.80, 0.801],  # 2-3 B: bake, plateau at 0.80
        [0.50, 0.55],  # 4 A re-entered at 0.50: regression 1 of 2, still alternating; bake
        [0.55, 0.551],  # 5 A: plateau at 0.55 -> B
        [0.70, 0.80],  # 6 B re-entered at 0.70 < 0.80: regression 2 -> sequential (B, then A); bake
        [0.80, 0.801],  # 7 B: plateau -> A
        [0.55, 0.60], [0.60, 0.601],  # 8-9 A: bake, plateau -> sequence complete
    ]
    result, _ = run(tmp_path, table, max_iterations=20, lock_in_after=None, oscillation_patience=2)
    assert [r.cycle for r in result.history] == ["A", "A", "B", "B", "A", "A", "B", "B", "A", "A"]
    assert [r.mode for r in result.history] == ["alternating"] * 6 + ["sequential"] * 4
    assert [r["iteration"] for r in result.regressions] == [4, 6]
    assert result.stop_reason == "sequential_complete"


def test_resume_after_crash_matches_an_uninterrupted_run(tmp_path):
    table = [
        [0.50, 0.55, 0.52], [0.55, 0.60], [0.60, 0.601],  # A: bake, bake, plateau
        [0.70, 0.71, 0.75], [0.75, 0.78], [0.78, 0.70],  # B: bake, bake, plateau
        [0.60, 0.65], [0.65, 0.6501],  # A: bake, plateau
        [0.78, 0.779],  # B: plateau -> converged
    ]
    clock = FakeClock()  # every iteration takes 20 fake seconds, so elapsed times are comparable too
    reference, _ = run(tmp_path, table, name="ref.json", hooks=ScriptedHooks(table, clock=clock), clock=clock,
                       max_iterations=20)
    assert reference.stop_reason == "converged"

    clock = FakeClock()
    crashing = ScriptedHooks(table, fail_at=4, clock=clock)
    with pytest.raises(RuntimeError, match="simulated crash in iteration 4"):
        run(tmp_path, table, hooks=crashing, clock=clock, max_iterations=20)
    assert crashing.checkpoints == [0, 1, 2, 3]
    assert last_checkpoint_iteration(tmp_path / "state.json") == 3

    clock = FakeClock()  # a new process: the clock starts over, the elapsed time comes from the state
    resumed_hooks = ScriptedHooks(table, clock=clock)
    resumed, _ = run(tmp_path, table, hooks=resumed_hooks, clock=clock, max_iterations=20)
    assert resumed_hooks.calls[0] == ("propose", "B", "B3-v1", 4, 4)  # continues at 4 with B's incumbent
    assert resumed_hooks.checkpoints == [4, 5, 6, 7, 8]
    assert [dataclasses.asdict(r) for r in resumed.history] == [dataclasses.asdict(r) for r in reference.history]
    assert resumed.elapsed_s == reference.elapsed_s == 180.0  # the crashed iteration's 20 s are not counted
    assert resumed.handoff() == reference.handoff()

    # a finished state returns its result without calling any hook
    idle = ScriptedHooks(table)
    again, _ = run(tmp_path, table, hooks=idle, max_iterations=20)
    assert idle.calls == [] and again.to_dict() == resumed.to_dict()


def test_state_from_another_config_is_an_error_naming_file_and_fix(tmp_path):
    table = [[1.0, 1.2], [1.2, 1.5]]
    run(tmp_path, table, max_iterations=1)
    with pytest.raises(ABStateMismatchError, match=r"state\.json.*different config.*delete the file"):
        run(tmp_path, table, max_iterations=2)
    with pytest.raises(ABStateMismatchError, match="different config or initial prompts"):
        run_ab_cycles(ScriptedHooks(table), ABCycleConfig(max_iterations=1),
                      initial_prompts={"A": "other", "B": PROMPTS["B"]}, state_path=tmp_path / "state.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ABStateMismatchError, match="junk.json is not an A/B cycle state file"):
        run(tmp_path, table, name="junk.json")


def test_hook_contract_violations_are_clear_errors(tmp_path):
    with pytest.raises(ABCycleError, match="cycle A proposed no prompts at iteration 0"):
        run(tmp_path, [[1.0]], name="empty.json")

    class ShortEvaluation(ScriptedHooks):
        def evaluate(self, cycle, prompts, iteration):
            return [1.0]

    with pytest.raises(ABCycleError, match="must return 3 scores"):
        run(tmp_path, [[1.0, 1.1, 1.2]], name="short.json", hooks=ShortEvaluation([[1.0, 1.1, 1.2]]))

    class TooMany(ScriptedHooks):
        def propose(self, cycle, incumbent, iteration, n):
            return [Proposal(f"p{j}", "mutation:test") for j in range(n + 1)]

    with pytest.raises(ABCycleError, match="must return 1..4 Proposal objects"):
        run(tmp_path, [[1.0] * 6], name="many.json", hooks=TooMany([[1.0] * 6]))

    class PlainStrings(ScriptedHooks):
        def propose(self, cycle, incumbent, iteration, n):
            return ["a prompt without an origin"]

    with pytest.raises(ABCycleError, match="Proposal objects"):
        run(tmp_path, [[1.0, 1.1]], name="strings.json", hooks=PlainStrings([[1.0, 1.1]]))

    class OtherType(ScriptedHooks):  # one Proposal class: look-alikes are refused, not silently accepted
        def propose(self, cycle, incumbent, iteration, n):
            return [types.SimpleNamespace(prompt="p0", origin="self:t=0.8")]

    with pytest.raises(ABCycleError, match="Proposal objects"):
        run(tmp_path, [[1.0, 1.1]], name="own.json", hooks=OtherType([[1.0, 1.1]]), max_iterations=1)
    with pytest.raises(ABCycleError, match="non-finite"):
        run(tmp_path, [[1.0, float("nan")]], name="nan.json")
    with pytest.raises(ValueError, match="initial_prompts must map exactly 'A'"):
        run_ab_cycles(ScriptedHooks([]), ABCycleConfig(), initial_prompts={"A": "x"}, state_path=tmp_path / "s.json")
    with pytest.raises(ValueError, match="start_cycle"):
        ABCycleConfig(start_cycle="C")
    with pytest.raises(ValueError, match="oscillation_patience"):
        ABCycleConfig(oscillation_patience=0)


def test_plot_trajectory_draws_both_cycles_and_writes_a_png(tmp_path):
    table = [[0.50, 0.55], [0.55, 0.551], [0.70, 0.75], [0.75, 0.751], [0.55, 0.5501]]  # converges at 4
    result, _ = run(tmp_path, table, max_iterations=10)
    figure = trajectory_figure(result.to_dict()["history"], result.stop_reason)
    scores = figure.axes[0]
    lines = {line.get_label(): line.get_xdata() for axis in figure.axes for line in axis.get_lines()}
    assert len(lines["A: tool use incumbent"]) == 3 and len(lines["B: persona incumbent"]) == 2
    assert len(lines["A strength (spec 1-0.5^N)"]) == 3 and len(lines["A strength (measured)"]) == 1
    assert "stop: converged" in scores.get_title()
    # each iteration's best proposal is drawn once, filled when it was adopted, hollow when it was not
    history = result.to_dict()["history"]
    points = {c.get_label(): len(c.get_offsets()) for c in scores.collections}
    for cycle, label, rows in (("A", "A: tool use", 3), ("B", "B: persona", 2)):
        adopted = sum(r["half_baked"] for r in history if r["cycle"] == cycle)
        assert points.get(f"{label} best proposal, adopted", 0) == adopted
        assert points.get(f"{label} best proposal, not better beyond noise", 0) == rows - adopted
    assert 0 < sum(r["half_baked"] for r in history) < len(history)  # both kinds drawn
    history[0]["initial_bake"] = {"prompt": "p", "strength_measured": 0.48, "strength_spec": 0.5}
    strength = trajectory_figure(history, result.stop_reason).axes[1]
    measured = next(line for line in strength.get_lines() if line.get_label() == "A strength (measured)")
    assert list(measured.get_xdata())[0] == history[0]["iteration"] and list(measured.get_ydata())[0] == 0.48
    path = plot_trajectory(result, tmp_path / "plots" / "trajectory.png")
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert not list((tmp_path / "plots").glob("*.tmp"))  # written atomically, nothing left behind
    with pytest.raises(ValueError, match="no iterations to plot"):
        trajectory_figure([], "max_iterations")


def test_swe_bench_names_are_used_only_when_swe_bench_is_the_fitness(tmp_path):
    table = [[1.0, 1.2], [1.2, 1.2]]
    logged = []
    hooks = ScriptedHooks(table)
    result = run_ab_cycles(hooks, ABCycleConfig(max_iterations=1), initial_prompts=PROMPTS,
                           state_path=tmp_path / "state.json", log=logged.append, a_fitness="swebench")
    assert logged[-1]["final/swe_bench_score"] == pytest.approx(1.2)
    assert logged[0]["a_cycle/baseline_swe_bench"] == 1.0 and logged[0]["a_cycle/variant_0_swe_bench"] == 1.2
    assert logged[-1]["final/total_improvement_swe_bench"] == pytest.approx(0.2)
    assert result.handoff()["swe_bench_score"] == pytest.approx(1.2)
    with pytest.raises(ValueError, match="a_fitness must be one of"):
        run_ab_cycles(hooks, ABCycleConfig(), initial_prompts=PROMPTS, state_path=tmp_path / "other.json",
                      a_fitness="swe_bench")


@pytest.mark.parametrize("min_iterations,cycles", [(2, ["A", "B", "A", "B"]), (1, ["A", "B"])])
def test_convergence_needs_min_cycle_iterations_of_each_cycle(tmp_path, min_iterations, cycles):
    table = [[0.5, 0.5]] * 6  # every iteration plateaus at once
    result, _ = run(tmp_path, table, max_iterations=6, min_cycle_iterations=min_iterations)
    assert [r.cycle for r in result.history] == cycles and result.stop_reason == "converged"
    assert ABCycleConfig().min_cycle_iterations == 2  # spec: check_convergence needs two scores per cycle


def test_one_spec_strength_counts_the_half_bakes_of_both_cycles(tmp_path):
    table = [[0.5, 0.6], [0.6, 0.6], [0.7, 0.8], [0.8, 0.8], [0.6, 0.6], [0.8, 0.8]]  # A bakes, B bakes
    result, _ = run(tmp_path, table, max_iterations=6, lock_in_after=None)
    assert [(r.cycle, r.baking_strength_spec) for r in result.history[:4]] == [("A", 0.5), ("A", 0.5), ("B", 0.75),
                                                                                ("B", 0.75)]
    assert result.handoff()["baking_strength_spec"] == 0.75


def test_the_initial_tool_prompt_is_half_baked_before_the_first_test(tmp_path):
    table = [[0.5, 0.6], [0.6, 0.6], [0.7, 0.7], [0.6, 0.6], [0.7, 0.7]]
    logged = []
    result, hooks = run(tmp_path, table, max_iterations=5, lock_in_after=None, log=logged.append,
                        half_bake_initial_tool_prompt=True)
    assert ABCycleConfig().half_bake_initial_tool_prompt  # spec: model_A1 = half_bake(model, initial prompt)
    assert hooks.calls[:2] == [("half_bake", "A", PROMPTS["A"], 0), ("propose", "A", PROMPTS["A"], 0, 4)]
    assert [c[1:] for c in hooks.calls if c[0] == "half_bake"] == [("A", PROMPTS["A"], 0), ("A", "A0-v0", 0)]
    # It counts as the first half-bake: the winner of iteration 0 is the second (75%).
    assert result.history[0].initial_bake == {"prompt": PROMPTS["A"], "strength_measured": 0.41, "strength_spec": 0.5}
    assert result.history[0].baking_strength_spec == 0.75 and result.history[0].half_bake_count == 2
    assert [b["origin"] for b in result.bakes("A")] == ["initial", "mutation:0"]
    assert logged[0]["a_cycle/initial_bake_strength_measured"] == 0.41
    assert sum(1 for c in hooks.calls if c[0] == "half_bake" and c[2] == PROMPTS["A"]) == 1  # once per run
