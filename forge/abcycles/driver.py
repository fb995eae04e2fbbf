"""Phase 6 control logic: the alternating A/B cycle driver, independent of models.

The phase supplies the work through :class:`ABHooks` (models, benchmarks, baking, Ray actors); this
module decides what happens next and keeps a resumable record. Cycle "A" optimises the tool-use prompt,
cycle "B" the self-guided persona prompt. Iterations are numbered 0, 1, 2, ... over both cycles.

Contract (each point is tested in ``tests/test_ab_cycles.py``):

* One iteration of cycle X: ``propose(X, incumbent_X, it, n)`` returns 1..n :class:`Proposal`;
  ``evaluate(X, [incumbent_X, *variants], it)`` scores them in order on this iteration's benchmark subset
  with the current model. The incumbent is re-scored every time: subsets rotate, so only a same-subset
  comparison is fair. A score is a number, or a :class:`PairedScore` that also gives the lower bound of the
  interval of its paired difference to the incumbent on the same items: such a variant is better beyond noise
  only when that bound is > 0. Winner = best variant (the first on ties) among those better beyond noise (a
  plain number always is), else the best variant; relative improvement =
  ``(winner - incumbent) / max(|incumbent|, 1e-9)``.
* Improvement >= ``plateau_threshold`` and the winner better beyond noise: ``half_bake(X, winner)``; the winner
  becomes incumbent_X; the
  cycle's half-bake count N rises (it triggers lock-in) and the spec strength ``1 - 0.5**M`` is recorded
  next to the strength the hook measured, M counting the half-bakes of both cycles as the spec's one
  strength does (A's 87.5% goes on to 93.75% in B); the cycle continues. Otherwise cycle X has plateaued:
  switch to the other cycle.
  The initial A prompt is half-baked before the A-cycle's first test (``half_bake_initial_tool_prompt``, the
  spec's model_A1; it counts as a half-bake); initial prompts are also the first incumbents a variant must
  beat.
* After the decision: ``checkpoint(it)``, then the state file is written atomically, then the record is
  logged. A saved state therefore never points at an iteration whose checkpoint is missing.
* ``plateaued[X]`` means "X plateaued on the current model": any half-bake (in either cycle) clears both
  flags. Convergence = both flags set, i.e. both cycles plateaued with no successful half-bake in
  between, once each cycle has run ``min_cycle_iterations`` iterations (the spec's check needs two
  scores of each); the run stops with reason ``"converged"``. Before that a plateau switches cycle.
* Other stops, checked between iterations: ``max_iterations`` (reason ``"max_iterations"``) and the
  wall-time budget (``"budget"``; elapsed time survives a resume, the time of a crashed iteration is lost).
  A cycle that proposes nothing, or an evaluation of the wrong length or with a non-finite score, raises
  :class:`ABCycleError`.
* Oscillation (spec risk 2, a cycle undoing the other's gains): the incumbent score at which a cycle is
  left is recorded; on re-entry its re-score (``prompts[0]`` of the first evaluation) is compared. A drop
  of more than ``plateau_threshold`` (relative) is a regression, recorded with the iteration and both
  values. After ``oscillation_patience`` regressions the mode becomes ``"sequential"``: the current cycle
  runs until it plateaus, then the other until it plateaus, then the run stops (``"sequential_complete"``,
  or ``"converged"`` if the second plateaus without a half-bake in between).
* Lock-in (spec risk 2 mitigation): after ``lock_in_after`` half-bakes in a cycle, ``full_bake`` the
  incumbent once (recorded in that iteration's ``lock_in``) and reset the cycle's count N to 0.
* Resume: when ``state_path`` exists the run continues at the next iteration with the saved state. The
  phase must first restore the model saved by ``checkpoint(last_checkpoint_iteration(state_path))``: a
  crash inside an iteration may have baked the model already. A state written under a different config or
  initial prompts raises :class:`ABStateMismatchError`. A finished state returns its result at once.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Protocol

from forge.artifacts import atomic_write_json
from forge.plots import pyplot, save_png
from forge.configtools import config_hash

CYCLES = ("A", "B")
STATE_VERSION = 1
# W&B prefixes of the spec: a_cycle/* is tool use, b_cycle/* is the persona.
METRIC_PREFIX = {"A": "a_cycle", "B": "b_cycle"}
CYCLE_NAMES = {"A": "tool prompt", "B": "persona"}  # what each cycle optimizes, for the console
# The A-cycle's score under the name of what it measures, per fitness (tool_persona.fitness): its final
# value and its total improvement. The spec's names (final/swe_bench_score) belong to SWE-bench only.
A_SCORE_NAMES = {"tooluse": ("tool_use_fitness", "total_improvement_tool_use"),
                 "swebench": ("swe_bench_score", "total_improvement_swe_bench")}
# Per-iteration names of the incumbent's and the proposals' scores: the spec's (a_cycle/baseline_swe_bench,
# a_cycle/variant_0_swe_bench, b_cycle/baseline_aggregate, b_cycle/self_prompt_0_score), with the A-cycle's
# benchmark named for what it is.
_A_METRIC = {"tooluse": "tool_use", "swebench": "swe_bench"}


def _score_names(cycle: str, a_fitness: str) -> tuple[str, str]:
    """(baseline name, proposal name pattern with {i}) of ``cycle``'s scores, without the prefix."""
    if cycle == "A":
        return f"baseline_{_A_METRIC[a_fitness]}", "variant_{i}_" + _A_METRIC[a_fitness]
    return "baseline_aggregate", "self_prompt_{i}_score"
# Score in a relative improvement's denominator when the incumbent scores 0.
_MIN_DENOMINATOR = 1e-9


class ABCycleError(RuntimeError):
    """A hook broke the A/B contract (no proposals, wrong number of scores, non-finite score)."""


class ABStateMismatchError(ValueError):
    """The state file was written by a run with another config or other initial prompts."""


@dataclass
class ABCycleConfig:
    """Control parameters of the alternating A/B driver; the defaults are the tiny preset."""

    plateau_threshold: float = 0.005  # relative improvement below this is a plateau (spec: 0.5%)
    max_iterations: int = 4  # iterations over both cycles together (full presets: 40)
    wall_time_budget_s: float | None = None  # stop once this much time has passed (checked between iterations);
    # Phase 6 then hands on the best model so far by its held-out check (the spec's cap keeps the best model)
    variants_per_iteration: int = 4  # proposals asked of propose() per iteration (spec: 4)
    oscillation_patience: int = 1  # cycle-entry regressions that switch the run to sequential mode
    lock_in_after: int | None = 3  # full-bake after this many half-bakes in a cycle (spec: 3); None: never
    start_cycle: Literal["A", "B"] = "A"  # the cycle of iteration 0 (spec: A, tool use)
    min_cycle_iterations: int = 2  # convergence needs this many iterations of each cycle (spec: 2)
    half_bake_initial_tool_prompt: bool = True  # half-bake the initial A prompt before its first test (spec step 2)

    def __post_init__(self) -> None:
        if not (self.plateau_threshold >= 0 and math.isfinite(self.plateau_threshold)):
            raise ValueError(f"plateau_threshold must be a finite number >= 0, got {self.plateau_threshold}")
        if self.max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1, got {self.max_iterations}")
        if self.wall_time_budget_s is not None and not self.wall_time_budget_s > 0:
            raise ValueError(f"wall_time_budget_s must be > 0 or None (no budget), got {self.wall_time_budget_s}")
        if self.variants_per_iteration < 1:
            raise ValueError(f"variants_per_iteration must be >= 1, got {self.variants_per_iteration}")
        if self.oscillation_patience < 1:
            raise ValueError(f"oscillation_patience must be >= 1, got {self.oscillation_patience}")
        if self.lock_in_after is not None and self.lock_in_after < 1:
            raise ValueError(f"lock_in_after must be >= 1 or None (no lock-in), got {self.lock_in_after}")
        if self.min_cycle_iterations < 1:
            raise ValueError(f"min_cycle_iterations must be >= 1, got {self.min_cycle_iterations}")
        if self.start_cycle not in CYCLES:
            raise ValueError(f"start_cycle must be 'A' or 'B', got {self.start_cycle!r}")


@dataclass(frozen=True)
class PairedScore:
    """A prompt's score with the lower bound of the interval of its paired difference to the incumbent (the same
    items; e.g. ``benchmarks.tooluse.accuracy_intervals``' ``difference_interval[0]``, 0 for the incumbent itself)."""

    score: float  # what ranks the prompts (the cycle's fitness)
    difference_low: float  # a variant is better than the incumbent beyond noise only when this is > 0


@dataclass(frozen=True)
class Proposal:
    """A candidate prompt and where it came from."""

    prompt: str  # the prompt text
    origin: str  # how it was made: "mutation:<operator>", "self:t=<temperature>" or "fallback:human"


class ABHooks(Protocol):
    """What the phase implements with models and Ray actors; the driver calls nothing else."""

    def propose(self, cycle: str, incumbent: str, iteration: int, n: int) -> list[Proposal]:
        """Up to ``n`` candidate prompts for ``cycle`` (tool variants for A, self-prompts for B)."""
        ...

    def evaluate(self, cycle: str, prompts: list[str], iteration: int) -> list[float | PairedScore]:
        """Scores of ``prompts`` in order, on this iteration's subset with the current model (numbers, or
        :class:`PairedScore` where the evaluation has paired intervals)."""
        ...

    def half_bake(self, cycle: str, prompt: str, iteration: int) -> float:
        """Half-bake ``prompt`` into the model; return the strength measured afterwards."""
        ...

    def full_bake(self, cycle: str, prompt: str, iteration: int) -> float:
        """Fully bake ``prompt`` (lock-in); return the strength measured afterwards."""
        ...

    def checkpoint(self, iteration: int) -> None:
        """Save the model and prompts as they are after ``iteration``."""
        ...


@dataclass
class IterationRecord:
    """What one iteration did; JSON-serialisable, kept in the state file and the result."""

    cycle: str  # "A" or "B"
    iteration: int  # global index over both cycles, from 0
    cycle_iteration: int  # index within this cycle, from 0
    incumbent: dict[str, Any]  # {"prompt", "origin", "score"}: the incumbent re-scored on this subset
    proposals: list[dict[str, Any]]  # [{"prompt", "origin", "score"}] in the order proposed
    winner_index: int  # index of the best proposal (among those better beyond noise, where any is)
    winner_score: float  # its score
    improvement: float  # (winner - incumbent) / max(|incumbent|, 1e-9)
    plateaued: bool  # improvement < plateau_threshold, or no variant better beyond noise
    half_baked: bool  # the winner was half-baked and became the incumbent
    half_bake_count: int  # N: half-bakes in this cycle since its last lock-in, counting this one
    baking_strength_spec: float  # 1 - 0.5**M, M = half-bakes so far over both cycles (the spec's one counter)
    baking_strength_measured: float | None  # what half_bake measured (None when nothing was baked)
    best_score: float  # the cycle's incumbent score after this iteration
    lock_in: dict[str, Any] | None  # {"prompt", "strength_measured", "half_bakes"} when full_bake ran
    regression: dict[str, Any] | None  # {"iteration", "cycle", "exit_score", "entry_score", "relative_drop"}
    mode: str  # "alternating" or "sequential", after this iteration
    next_cycle: str | None  # the cycle of the next iteration; None when the run stopped here
    iteration_s: float  # wall time of this iteration
    elapsed_s: float  # wall time of the run so far, across resumes
    initial_bake: dict[str, Any] | None = None  # {"prompt", "strength_measured", "strength_spec"}: initial A prompt
    winner_difference_low: float | None = None  # lower bound of the winner's paired difference to the incumbent
    # (None: the evaluation gave plain scores)


@dataclass
class _RunState:
    """Everything needed to continue a run; saved after every iteration."""

    config_hash: str  # hash of the config and the initial prompts
    next_iteration: int  # the iteration to run next
    cycle: str  # the cycle of the next iteration
    entering: bool  # the next iteration is the first of a visit to ``cycle``
    incumbents: dict[str, dict[str, Any]]  # per cycle: {"prompt", "origin", "score" (None before scoring)}
    cycle_iterations: dict[str, int]  # iterations run per cycle
    half_bakes: dict[str, int]  # per cycle: N, half-bakes since its last lock-in
    total_half_bakes: dict[str, int]  # per cycle: all half-bakes
    measured_strength: dict[str, float | None]  # per cycle: strength measured by its last bake
    last_bake: dict[str, str | None]  # per cycle: "half" or "full" (lock-in); None before any bake
    plateaued: dict[str, bool]  # per cycle: plateaued on the current model (no half-bake since)
    exit_scores: dict[str, float | None]  # per cycle: incumbent score when the cycle was last left
    mode: str  # "alternating" or "sequential"
    sequential_order: list[str] | None  # in sequential mode: [cycle finishing now, cycle after it]
    regressions: list[dict[str, Any]]  # every cycle-entry regression: iteration, cycle, scores
    history: list[dict[str, Any]]  # IterationRecord dicts
    elapsed_s: float  # wall time spent in completed iterations, across resumes
    stop_reason: str | None  # set once the run has stopped
    version: int = STATE_VERSION  # state file format


@dataclass
class ABResult:
    """The outcome of an A/B run: its history, why it stopped and what each cycle ended with."""

    history: list[IterationRecord]  # one record per iteration, in order
    stop_reason: str  # "converged", "sequential_complete", "max_iterations" or "budget"
    mode: str  # "alternating", or "sequential" after oscillation
    incumbents: dict[str, str]  # per cycle: the final incumbent prompt
    origins: dict[str, str]  # per cycle: where that prompt came from ("initial" if never beaten)
    scores: dict[str, float | None]  # per cycle: its last measured score (None if the cycle never ran)
    iterations: dict[str, int]  # iterations run per cycle
    half_bakes: dict[str, int]  # per cycle: all half-bakes
    strengths: dict[str, dict[str, Any]]  # per cycle: {"last_bake", "half_bakes_since_lock_in", "spec", "measured"}
    regressions: list[dict[str, Any]]  # cycle-entry regressions seen
    elapsed_s: float  # wall time of the run across resumes
    a_fitness: str = "tooluse"  # what the A-cycle's score is (a key of A_SCORE_NAMES)

    @property
    def converged(self) -> bool:
        """Both cycles ran until they plateaued (alternating, or sequentially after oscillation)."""
        return self.stop_reason in ("converged", "sequential_complete")

    def bakes(self, cycle: str) -> list[dict[str, Any]]:
        """Every prompt baked in ``cycle``, in order: iteration, kind ("half"/"full"), prompt, strengths."""
        out = []
        for record in self.history:
            if record.cycle != cycle:
                continue
            if record.initial_bake is not None:
                out.append({"iteration": record.iteration, "kind": "half", "prompt": record.initial_bake["prompt"],
                            "origin": "initial", "strength_spec": record.initial_bake["strength_spec"],
                            "strength_measured": record.initial_bake["strength_measured"]})
            if record.half_baked:
                winner = record.proposals[record.winner_index]
                out.append({"iteration": record.iteration, "kind": "half", "prompt": winner["prompt"],
                            "origin": winner["origin"], "strength_spec": record.baking_strength_spec,
                            "strength_measured": record.baking_strength_measured})
            if record.lock_in is not None:
                # a lock-in always follows this iteration's half-bake, so the baked prompt is the winner
                out.append({"iteration": record.iteration, "kind": "full", "prompt": record.lock_in["prompt"],
                            "origin": record.proposals[record.winner_index]["origin"], "strength_spec": 1.0,
                            "strength_measured": record.lock_in["strength_measured"]})
        return out

    def prompts_after(self, iteration: int) -> dict[str, str]:
        """The incumbent prompts after ``iteration``: each cycle's initial prompt, replaced by its half-baked
        winners up to then (the prompts that go with that iteration's checkpoint)."""
        prompts = {c: next((r.incumbent["prompt"] for r in self.history if r.cycle == c), self.incumbents[c])
                   for c in CYCLES}
        for record in self.history[:iteration + 1]:
            if record.half_baked:
                prompts[record.cycle] = record.proposals[record.winner_index]["prompt"]
        return prompts

    def baseline(self, cycle: str) -> float | None:
        """The cycle's first incumbent score (before anything of this run was baked for it)."""
        return next((r.incumbent["score"] for r in self.history if r.cycle == cycle), None)

    def final_metrics(self) -> dict[str, Any]:
        """The spec's final/* and convergence/* summary."""
        out: dict[str, Any] = {
            "convergence/total_iterations": len(self.history),
            "convergence/a_cycle_iterations": self.iterations["A"],
            "convergence/b_cycle_iterations": self.iterations["B"],
            "convergence/converged": self.converged,
            "convergence/stop_reason": self.stop_reason,
            "convergence/mode": self.mode,
        }
        a_score, a_gain = A_SCORE_NAMES[self.a_fitness]
        for cycle, name, gain in (("A", f"final/{a_score}", f"final/{a_gain}"),
                                  ("B", "final/aggregate_benchmark", "final/total_improvement_aggregate")):
            final, first = self.scores[cycle], self.baseline(cycle)
            if final is not None:
                out[name] = final
            if final is not None and first is not None:
                out[gain] = relative_gain(final, first)
        return out

    def handoff(self) -> dict[str, Any]:
        """Phase 7 handoff metadata (spec "To Phase 7"); A's score under the name of what it measures."""
        return {
            "phase": 6,
            "a_cycle_fitness": self.a_fitness,
            A_SCORE_NAMES[self.a_fitness][0]: self.scores["A"],
            "aggregate_benchmark": self.scores["B"],
            "a_cycle_iterations": self.iterations["A"],
            "b_cycle_iterations": self.iterations["B"],
            "baking_strength": {c: dict(self.strengths[c]) for c in CYCLES},
            "baking_strength_spec": spec_strength(sum(self.half_bakes.values())),
            "tool_prompts_baked": self.bakes("A"),
            "persona_prompts_baked": self.bakes("B"),
            "final_prompts": dict(self.incumbents),
            "stop_reason": self.stop_reason,
            "converged": self.converged,
            "mode": self.mode,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "history": [dataclasses.asdict(r) for r in self.history],
            "stop_reason": self.stop_reason,
            "converged": self.converged,
            "mode": self.mode,
            "incumbents": self.incumbents,
            "origins": self.origins,
            "scores": self.scores,
            "iterations": self.iterations,
            "half_bakes": self.half_bakes,
            "strengths": self.strengths,
            "regressions": self.regressions,
            "elapsed_s": self.elapsed_s,
            "handoff": self.handoff(),
        }


def spec_strength(half_bakes: int) -> float:
    """The spec's half-baking stack: S_N = 1 - 0.5**N."""
    return 1.0 - 0.5 ** half_bakes


def _other(cycle: str) -> str:
    return "B" if cycle == "A" else "A"


def _run_hash(config: ABCycleConfig, initial_prompts: dict[str, str]) -> str:
    return config_hash({"config": dataclasses.asdict(config), "initial_prompts": initial_prompts})


def _new_state(config: ABCycleConfig, initial_prompts: dict[str, str], run_hash: str) -> _RunState:
    per_cycle = lambda value: {c: value for c in CYCLES}  # noqa: E731
    return _RunState(
        config_hash=run_hash, next_iteration=0, cycle=config.start_cycle, entering=True,
        incumbents={c: {"prompt": initial_prompts[c], "origin": "initial", "score": None} for c in CYCLES},
        cycle_iterations=per_cycle(0), half_bakes=per_cycle(0), total_half_bakes=per_cycle(0),
        measured_strength=per_cycle(None), last_bake=per_cycle(None), plateaued=per_cycle(False),
        exit_scores=per_cycle(None),
        mode="alternating", sequential_order=None, regressions=[], history=[], elapsed_s=0.0, stop_reason=None,
    )


def _load_state(path: Path) -> _RunState:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        state = _RunState(**data)
    except (json.JSONDecodeError, TypeError) as err:
        raise ABStateMismatchError(
            f"{path} is not an A/B cycle state file ({err}); point state_path elsewhere or delete it to start over"
        ) from err
    if state.version != STATE_VERSION:
        raise ABStateMismatchError(f"{path} has state format {state.version}, this code reads {STATE_VERSION}; "
                                   "delete it to start over")
    return state


def last_checkpoint_iteration(state_path: Path) -> int | None:
    """The iteration whose checkpoint a resumed run continues from; None when nothing was saved yet."""
    state_path = Path(state_path)
    if not state_path.exists():
        return None
    last = _load_state(state_path).next_iteration - 1
    return last if last >= 0 else None


def _strength(state: _RunState, cycle: str) -> dict[str, Any]:
    """The cycle's current strength: 1.0 (spec) right after a lock-in, else 1 - 0.5**N, next to the measured."""
    locked = state.last_bake[cycle] == "full"
    return {"last_bake": state.last_bake[cycle], "half_bakes_since_lock_in": state.half_bakes[cycle],
            "spec": 1.0 if locked else spec_strength(state.half_bakes[cycle]),
            "measured": state.measured_strength[cycle]}


def _result(state: _RunState, a_fitness: str) -> ABResult:
    return ABResult(
        history=[IterationRecord(**r) for r in state.history],
        stop_reason=state.stop_reason,  # always set here: the run has stopped
        mode=state.mode,
        incumbents={c: state.incumbents[c]["prompt"] for c in CYCLES},
        origins={c: state.incumbents[c]["origin"] for c in CYCLES},
        scores={c: state.incumbents[c]["score"] for c in CYCLES},
        iterations=dict(state.cycle_iterations),
        half_bakes=dict(state.total_half_bakes),
        strengths={c: _strength(state, c) for c in CYCLES},
        regressions=list(state.regressions),
        elapsed_s=state.elapsed_s,
        a_fitness=a_fitness,
    )


def _checked_proposals(proposals: Any, cycle: str, iteration: int, n: int) -> list[Proposal]:
    if not isinstance(proposals, list) or not proposals:
        raise ABCycleError(f"cycle {cycle} proposed no prompts at iteration {iteration}: propose() must return "
                           f"1..{n} Proposal objects (add a fallback, e.g. origin 'fallback:human')")
    if len(proposals) > n or not all(isinstance(p, Proposal) for p in proposals):
        raise ABCycleError(f"cycle {cycle}, iteration {iteration}: propose() must return 1..{n} Proposal objects, "
                           f"got {proposals!r}")
    return proposals


def _checked_scores(scores: Any, expected: int, cycle: str,
                    iteration: int) -> tuple[list[float], list[float | None]]:
    """The scores, and each one's paired difference lower bound (None for a plain number)."""
    if not isinstance(scores, (list, tuple)) or len(scores) != expected:
        raise ABCycleError(f"cycle {cycle}, iteration {iteration}: evaluate() must return {expected} scores "
                           f"(incumbent first, then each proposal), got {scores!r}")
    values = [float(s.score) if isinstance(s, PairedScore) else float(s) for s in scores]
    lows = [float(s.difference_low) if isinstance(s, PairedScore) else None for s in scores]
    if not all(math.isfinite(v) for v in values + [low for low in lows if low is not None]):
        raise ABCycleError(f"cycle {cycle}, iteration {iteration}: evaluate() returned a non-finite score {scores}")
    return values, lows


def relative_gain(new: float, old: float) -> float:
    """(new - old) / |old|: the spec's "improves by x% from baseline" (a zero baseline counts as 1e-9)."""
    return (new - old) / max(abs(old), _MIN_DENOMINATOR)


def _run_iteration(hooks: ABHooks, config: ABCycleConfig, state: _RunState) -> IterationRecord:
    """Run ``state.next_iteration`` up to (not including) the checkpoint; updates ``state`` in place."""
    cycle, it = state.cycle, state.next_iteration
    incumbent = state.incumbents[cycle]
    initial_bake = None
    if cycle == "A" and state.cycle_iterations["A"] == 0 and config.half_bake_initial_tool_prompt:
        # The spec's A-cycle starts from the model with its initial tool prompt half-baked (model_A1).
        strength = float(hooks.half_bake(cycle, incumbent["prompt"], it))
        state.half_bakes[cycle] += 1
        state.total_half_bakes[cycle] += 1
        initial_bake = {"prompt": incumbent["prompt"], "strength_measured": strength,
                        "strength_spec": spec_strength(sum(state.total_half_bakes.values()))}
        state.measured_strength[cycle] = strength
        state.last_bake[cycle] = "half"
    proposals = _checked_proposals(hooks.propose(cycle, incumbent["prompt"], it, config.variants_per_iteration),
                                   cycle, it, config.variants_per_iteration)
    scores, lows = _checked_scores(hooks.evaluate(cycle, [incumbent["prompt"], *(p.prompt for p in proposals)], it),
                                   1 + len(proposals), cycle, it)
    incumbent_score, variant_scores, variant_lows = scores[0], scores[1:], lows[1:]

    regression = None
    exit_score = state.exit_scores[cycle]
    if state.entering and exit_score is not None:
        drop = -relative_gain(incumbent_score, exit_score)
        if drop > config.plateau_threshold:
            regression = {"iteration": it, "cycle": cycle, "exit_score": exit_score,
                          "entry_score": incumbent_score, "relative_drop": drop}
            state.regressions.append(regression)
            if state.mode == "alternating" and len(state.regressions) >= config.oscillation_patience:
                state.mode = "sequential"
                state.sequential_order = [cycle, _other(cycle)]

    # Better beyond noise: the paired difference's lower bound is > 0 (a plain number has only its point value).
    beyond = [i for i, low in enumerate(variant_lows) if low is None or low > 0]
    winner_index = max(beyond or range(len(proposals)), key=lambda i: variant_scores[i])  # first best on ties
    winner, winner_score = proposals[winner_index], variant_scores[winner_index]
    improvement = relative_gain(winner_score, incumbent_score)
    plateaued = improvement < config.plateau_threshold or winner_index not in beyond

    measured, lock_in = None, None
    if plateaued:
        state.incumbents[cycle] = {**incumbent, "score": incumbent_score}
        state.plateaued[cycle] = True
        state.exit_scores[cycle] = incumbent_score
    else:
        measured = float(hooks.half_bake(cycle, winner.prompt, it))
        state.incumbents[cycle] = {"prompt": winner.prompt, "origin": winner.origin, "score": winner_score}
        state.half_bakes[cycle] += 1
        state.total_half_bakes[cycle] += 1
        state.measured_strength[cycle] = measured
        state.last_bake[cycle] = "half"
        state.plateaued = {c: False for c in CYCLES}  # the model changed: earlier plateaus no longer hold
    half_bake_count = state.half_bakes[cycle]
    if not plateaued and config.lock_in_after is not None and half_bake_count >= config.lock_in_after:
        full = float(hooks.full_bake(cycle, winner.prompt, it))
        lock_in = {"prompt": winner.prompt, "strength_measured": full, "half_bakes": half_bake_count}
        state.half_bakes[cycle] = 0
        state.measured_strength[cycle] = full
        state.last_bake[cycle] = "full"

    state.cycle_iterations[cycle] += 1
    next_cycle: str | None = cycle
    if plateaued:
        if all(state.plateaued.values()) and all(state.cycle_iterations[c] >= config.min_cycle_iterations
                                                 for c in CYCLES):
            state.stop_reason, next_cycle = "converged", None
        elif state.mode == "sequential" and state.sequential_order is not None and cycle == state.sequential_order[1]:
            state.stop_reason, next_cycle = "sequential_complete", None
        else:
            next_cycle = _other(cycle)
    state.entering = next_cycle is not None and next_cycle != cycle
    state.cycle = next_cycle or cycle
    return IterationRecord(
        cycle=cycle, iteration=it, cycle_iteration=state.cycle_iterations[cycle] - 1,
        incumbent={**incumbent, "score": incumbent_score},
        proposals=[{"prompt": p.prompt, "origin": p.origin, "score": s} for p, s in zip(proposals, variant_scores)],
        winner_index=winner_index, winner_score=winner_score, improvement=improvement, plateaued=plateaued,
        half_baked=not plateaued, half_bake_count=half_bake_count,
        baking_strength_spec=spec_strength(sum(state.total_half_bakes.values())), baking_strength_measured=measured,
        best_score=state.incumbents[cycle]["score"], lock_in=lock_in, regression=regression, mode=state.mode,
        next_cycle=next_cycle, iteration_s=0.0, elapsed_s=0.0, initial_bake=initial_bake,
        winner_difference_low=variant_lows[winner_index],
    )


def _iteration_metrics(record: IterationRecord, state: _RunState, a_fitness: str) -> dict[str, Any]:
    """The W&B record of one iteration under the spec's names (a_cycle/*, b_cycle/*, convergence/*)."""
    p = METRIC_PREFIX[record.cycle]
    baseline, proposal = _score_names(record.cycle, a_fitness)
    out: dict[str, Any] = {
        f"{p}/iteration": record.iteration,
        f"{p}/cycle_iteration": record.cycle_iteration,
        f"{p}/{baseline}": record.incumbent["score"],
        **{f"{p}/{proposal.format(i=i)}": v["score"] for i, v in enumerate(record.proposals)},
        f"{p}/winner_idx": record.winner_index,
        f"{p}/winner_score": record.winner_score,
        f"{p}/best_score": record.best_score,
        f"{p}/improvement": record.improvement,
        f"{p}/plateau_detected": record.plateaued,
        f"{p}/half_baked": record.half_baked,
        f"{p}/half_bake_count": record.half_bake_count,
        f"{p}/baking_strength": record.baking_strength_spec,
        f"{p}/iteration_s": record.iteration_s,
        "convergence/total_iterations": record.iteration + 1,
        "convergence/a_cycle_iterations": state.cycle_iterations["A"],
        "convergence/b_cycle_iterations": state.cycle_iterations["B"],
        "convergence/a_plateau": state.plateaued["A"],
        "convergence/b_plateau": state.plateaued["B"],
        "convergence/mode": record.mode,
        "convergence/regressions": len(state.regressions),
        "convergence/elapsed_s": record.elapsed_s,
    }
    if record.baking_strength_measured is not None:
        out[f"{p}/baking_strength_measured"] = record.baking_strength_measured
    if record.lock_in is not None:
        out[f"{p}/lock_in_strength_measured"] = record.lock_in["strength_measured"]
    if record.initial_bake is not None:
        out[f"{p}/initial_bake_strength_measured"] = record.initial_bake["strength_measured"]
    if record.regression is not None:
        out[f"{p}/regression_relative_drop"] = record.regression["relative_drop"]
    if record.winner_difference_low is not None:
        out[f"{p}/winner_difference_low"] = record.winner_difference_low
    return out


def describe_iteration(record: IterationRecord) -> str:
    """One line for a reader: what the iteration scored, whether its best proposal was adopted and why not."""
    name = CYCLE_NAMES[record.cycle]
    low = record.winner_difference_low
    parts = []
    if record.initial_bake is not None:
        parts.append(f"initial {name} half-baked (measured strength {record.initial_bake['strength_measured']:.3f})")
    noise = "" if low is None else f", paired difference's lower bound {low:+.3g}"
    count = len(record.proposals)
    parts.append(f"incumbent {record.incumbent['score']:.3f}, best of {count} proposal{'s' * (count != 1)} "
                 f"{record.winner_score:.3f} ({record.improvement:+.1%}{noise})")
    if record.half_baked:
        outcome = f"adopted and half-baked (measured strength {record.baking_strength_measured:.3f})"
        if record.lock_in is not None:
            outcome += f", then locked in by a full bake ({record.lock_in['strength_measured']:.3f})"
    else:
        outcome = "plateau: " + ("not better beyond noise" if low is not None and low <= 0
                                 else "gain under the plateau threshold")
    after = f"next: {record.next_cycle}" if record.next_cycle is not None else "the cycles end"
    return f"iteration {record.iteration} ({record.cycle}, {name}): " + "; ".join(parts) + f" -> {outcome}; {after}"


def _limit_reached(config: ABCycleConfig, state: _RunState) -> str | None:
    """The stop reason of a limit that ends the run before the next iteration, if any."""
    if state.next_iteration >= config.max_iterations:
        return "max_iterations"
    if config.wall_time_budget_s is not None and state.elapsed_s >= config.wall_time_budget_s:
        return "budget"
    return None


def run_ab_cycles(hooks: ABHooks, config: ABCycleConfig, *, initial_prompts: dict[str, str], state_path: Path,
                  log: Callable[[dict[str, Any]], None] | None = None,
                  clock: Callable[[], float] = time.monotonic, a_fitness: str = "tooluse",
                  say: Callable[[str], None] | None = None) -> ABResult:
    """Alternate the A (tool use) and B (persona) cycles until they converge or a limit stops the run.

    ``initial_prompts`` maps "A" and "B" to the first incumbents. ``state_path`` is written after every
    iteration and resumed from when it exists. ``log`` receives one record per iteration under the spec's
    metric names and a final ``final/*`` summary; ``a_fitness`` names the A-cycle's score there (a key of
    ``A_SCORE_NAMES``); ``say`` receives :func:`describe_iteration`'s line per iteration. See the module
    docstring for the full contract.
    """
    if a_fitness not in A_SCORE_NAMES:
        raise ValueError(f"a_fitness must be one of {sorted(A_SCORE_NAMES)}, got {a_fitness!r}")
    if set(initial_prompts) != set(CYCLES) or not all(isinstance(initial_prompts[c], str) for c in CYCLES):
        raise ValueError(f"initial_prompts must map exactly 'A' (tool use) and 'B' (persona) to prompt strings, "
                         f"got keys {sorted(initial_prompts)}")
    state_path = Path(state_path)
    run_hash = _run_hash(config, initial_prompts)
    if state_path.exists():
        state = _load_state(state_path)
        if state.config_hash != run_hash:
            raise ABStateMismatchError(
                f"{state_path} was written by an A/B run with a different config or initial prompts "
                f"(state {state.config_hash[:12]}, this run {run_hash[:12]}); resume with the same config and "
                "prompts, or delete the file (or pass another state_path) to start a new run"
            )
        if state.stop_reason is not None:
            return _result(state, a_fitness)
    else:
        state = _new_state(config, initial_prompts, run_hash)

    started, elapsed_before = clock(), state.elapsed_s
    while state.stop_reason is None:
        state.stop_reason = _limit_reached(config, state)
        if state.stop_reason is not None:
            atomic_write_json(state_path, dataclasses.asdict(state))
            break
        iteration_start = clock()
        record = _run_iteration(hooks, config, state)
        hooks.checkpoint(record.iteration)
        now = clock()
        record.iteration_s = now - iteration_start
        record.elapsed_s = state.elapsed_s = elapsed_before + (now - started)
        state.history.append(dataclasses.asdict(record))
        state.next_iteration += 1
        atomic_write_json(state_path, dataclasses.asdict(state))
        if log is not None:
            log(_iteration_metrics(record, state, a_fitness))
        if say is not None:
            say(describe_iteration(record))
    result = _result(state, a_fitness)
    if log is not None:
        log(result.final_metrics())
    return result


# --- trajectory plot ------------------------------------------------------------------------------------

def trajectory_figure(history: list[dict[str, Any]], stop_reason: str):
    """Both cycles' incumbent and best-proposal scores per iteration, and the baking strength (spec 1 - 0.5^N and
    measured), from the history rows (``IterationRecord`` fields) of a result or a saved trajectory."""
    if not history:
        raise ValueError("the A/B result has no iterations to plot; run at least one iteration first")
    fig, (ax, ax_strength) = pyplot().subplots(2, 1, figsize=(9.5, 6), sharex=True)
    for cycle, colour, label in (("A", "C0", "A: tool use"), ("B", "C3", "B: persona")):
        rows = [r for r in history if r["cycle"] == cycle]
        if not rows:
            continue
        ax.plot([r["iteration"] for r in rows], [r["best_score"] for r in rows], "-o", color=colour,
                label=f"{label} incumbent")
        # A proposal that scores higher on the iteration's items is still not taken unless it is better beyond
        # noise (its paired difference's lower bound above 0): drawn hollow, so a higher cross is not read as a win.
        for adopted, marker, face, note in ((True, "*", colour, "adopted"),
                                            (False, "o", "none", "not better beyond noise")):
            chosen = [r for r in rows if r["half_baked"] is adopted]
            if chosen:
                ax.scatter([r["iteration"] for r in chosen], [r["winner_score"] for r in chosen], marker=marker,
                           facecolors=face, edgecolors=colour, s=60, label=f"{label} best proposal, {note}")
        ax_strength.plot([r["iteration"] for r in rows], [r["baking_strength_spec"] for r in rows], "--o",
                         color=colour, label=f"{cycle} strength (spec 1-0.5^N)")
        # the initial tool prompt's half-bake comes before its iteration's scoring (and any bake of its winner)
        measured = sorted([(r["iteration"], 0, r["initial_bake"]["strength_measured"]) for r in rows
                           if r.get("initial_bake")] +
                          [(r["iteration"], 1, r["baking_strength_measured"]) for r in rows
                           if r["baking_strength_measured"] is not None])
        measured = [(iteration, value) for iteration, _, value in measured]
        if measured:
            ax_strength.plot(*zip(*measured), "-s", color=colour, label=f"{cycle} strength (measured)")
    ax.set_ylabel("score on the iteration's items")
    ax.set_title(f"Phase 6 A/B cycles (stop: {stop_reason})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax_strength.set_xlabel("iteration")
    ax_strength.set_ylabel("baking strength")
    ax_strength.set_ylim(-0.05, 1.05)
    ax_strength.grid(alpha=0.3)
    ax_strength.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    ax_strength.set_xticks([r["iteration"] for r in history])
    return fig


def plot_trajectory(result: ABResult, path: Path) -> Path:
    """Write the trajectory figure of ``result`` as a PNG (atomically)."""
    return save_png(trajectory_figure(result.to_dict()["history"], result.stop_reason), path)
