"""The task-world reasoning source (Phase 3 without a data folder) and the phase's held-out set and criteria."""
from __future__ import annotations

import re
from collections import Counter
from types import SimpleNamespace

import pytest

from forge.config import PipelineConfig
from forge.data import taskworld
from forge.data.arithmetic import calculate
from forge.quietstar.data import validate_examples
from forge.quietstar.taskworld import (CELLS, STRATEGIES, TaskWorldReasoningConfig, TaskWorldReasoningGenerator,
                                       cell_items, moves, reasoning_example)

_EQUATION = re.compile(r"^(\d+)([+\-*/])(\d+)(?:([+\-])(\d+))?=(-?\d+)$")


def _holds(line: str) -> bool:
    """Whether a trace line that states an equation is true (column steps: "14-8-1=5", "4*5+3=23")."""
    match = _EQUATION.match(line)
    assert match, f"not an equation: {line!r}"
    a, op, b, op2, c, result = match.groups()
    expression = f"{a}{op}{b}" + (f"{op2}{c}" if op2 else "")
    return calculate(expression) == result


def test_examples_pass_the_validation_with_the_sources_strategies_and_balance_the_cells():
    examples = list(TaskWorldReasoningGenerator().generate(120))
    report = validate_examples(examples, min_examples=120, strategies=STRATEGIES)
    assert report.passed, report.failures()
    assert {s for e in examples for s in e.strategies} == set(STRATEGIES)
    assert Counter(e.source for e in examples) == {f"taskworld-{f}_{lv}": 20 for f, lv in CELLS}
    assert len({e.question for e in examples}) == 120
    # The ten-strategy check still applies where it is asked for: arithmetic traces use three.
    failed = validate_examples(examples, min_examples=120).failures()
    assert [check.name for check in failed] == ["all_strategies"]
    assert "<bayesian>" in failed[0].detail
    with pytest.raises(ValueError, match="choose some of"):
        validate_examples(examples, min_examples=1, strategies=["<guess>"])


def test_every_step_equation_holds_and_the_trace_is_the_items():
    checked = 0
    for item in cell_items(240, split="train", seed=3):
        taskworld.check_item(item)
        example = reasoning_example(item)
        lines = example.thinking.splitlines()[1:-1]
        assert [line.split(" ", 1)[0] for line in lines].count("<step>") == len(item.steps)
        assert [line.split(" ", 1)[1] for line in lines if line.startswith("<step>")] == list(item.steps)
        assert example.answer == item.answer and example.question == item.question
        for strategy, text in moves(item):
            # Comparison steps ("2 digits vs 2 digits", "7=7", "3<4") are verified by check_item above.
            if strategy == "<orthogonal>" or (strategy == "<step>" and item.family != "cmp"):
                assert _holds(text), (item.id, text)
                checked += 1
        if item.family == "cmp":
            low, high = sorted(map(int, re.findall(r"\d+", item.question)))
            assert moves(item)[-1] == ("<orthogonal>", f"{high}-{low}={high - low}")
        else:  # the inverse operation gives back the first operand
            assert moves(item)[-1][1].endswith("=" + re.match(r"\d+", item.calls[0]).group())
    assert checked > 600


def test_a_false_step_is_caught():
    assert _holds("4+8+1=13") and not _holds("4+8+1=12")
    assert _holds("14-8-1=5") and not _holds("14-8-1=6")
    assert _holds("432/8=54") and not _holds("432/8=53")


def test_train_and_heldout_sides_never_share_a_problem():
    train = cell_items(600, split="train", seed=0)
    heldout = TaskWorldReasoningGenerator(TaskWorldReasoningConfig(heldout=True, seed=0)).items(120)
    assert len(train) == 600 and len(heldout) == 120
    taskworld.check_disjoint(train, heldout)
    assert all(taskworld.is_heldout(item.canonical) for item in heldout)
    assert not any(taskworld.is_heldout(item.canonical) for item in train)
    # The same problem drawn on the other side would be caught (the check can fail).
    with pytest.raises(ValueError, match="in both"):
        taskworld.check_disjoint(train, train[:1])


def test_direct_pairs_are_the_scoreboards_form_on_the_train_side_of_its_cells():
    from benchmarks.tasks import read_taskworld

    direct_pairs = taskworld.direct_pairs
    pairs = direct_pairs(200, seed=0)
    assert len(pairs) == len(set(pairs)) == 200 and direct_pairs(200, seed=0) == pairs != direct_pairs(200, seed=1)
    scoreboard = read_taskworld(mode="direct", easy=True)
    for prompt, target in pairs + [(doc["prompt"], doc["target"]) for doc in scoreboard]:
        assert re.fullmatch(r"Question: (What is \d+\+\d+|Which is larger, \d+ or \d+)\?\n", prompt), prompt
        assert re.fullmatch(r"Answer: \d+\n", target), target
    assert {prompt.split(" ")[1] for prompt, _ in pairs} == {"What", "Which"}  # both easy families
    assert not {prompt for prompt, _ in pairs} & {doc["prompt"] for doc in scoreboard}
    assert direct_pairs(0, seed=0) == []
    with pytest.raises(ValueError, match="n must be >= 0"):
        direct_pairs(-1, seed=0)


def test_other_families_are_refused():
    word = taskworld.generate_items(1, families=["word"], levels=[2])[0]
    with pytest.raises(ValueError, match="not word"):
        moves(word)


def _ctx(data_dir=None, source="auto"):
    config = PipelineConfig()
    config.quietstar.data_source = source
    config.quietstar.eval_problems = 12
    return SimpleNamespace(config=config, data_dir=data_dir)


def test_without_a_data_folder_the_phase_trains_and_measures_on_the_task_world():
    from forge.phases.quietstar import data_source, eval_set, heldout_problems, reasoning_examples

    ctx = _ctx()
    assert data_source(ctx) == "taskworld" and data_source(_ctx("/data")) == "offline"
    ctx.config.quietstar.num_examples = ctx.config.quietstar.min_examples = 60
    examples, info = reasoning_examples(ctx)
    assert info == {"source": "taskworld", "generator": "taskworld"} and len(examples) == 60
    problems = heldout_problems(ctx)
    assert list(problems) == ["taskworld"] and len(problems["taskworld"]) == 12
    trained = {e.question for e in examples}
    assert not trained & {question for question, _ in problems["taskworld"]}
    assert eval_set(problems) == "taskworld" and eval_set(["taskworld", "gsm8k"]) == "gsm8k"
    assert list(heldout_problems(_ctx(source="synthetic"))) == ["synthetic"]
    with pytest.raises(ValueError, match="none of the held-out sets"):
        eval_set(["commonsense"])


def test_the_configured_cells_are_trained_and_measured_and_others_refused():
    from forge.phases.quietstar import heldout_problems, reasoning_examples

    ctx = _ctx()
    ctx.config.quietstar.num_examples = ctx.config.quietstar.min_examples = 40
    ctx.config.quietstar.taskworld_cells = ["add_2", "cmp_2"]
    examples, _ = reasoning_examples(ctx)
    assert Counter(e.source for e in examples) == {"taskworld-add_2": 20, "taskworld-cmp_2": 20}
    questions = [question for question, _ in heldout_problems(ctx)["taskworld"]]
    assert len(questions) == 12 and {q.startswith("Which") for q in questions} == {True, False}
    assert all("-" not in q and "*" not in q and len(re.findall(r"\d+", q)[0]) <= 2 for q in questions)
    # Without comparisons the traces have no <mece> line, and the validation asks only for what they use.
    ctx.config.quietstar.taskworld_cells = ["add_2", "sub_2"]
    examples, _ = reasoning_examples(ctx)
    assert {s for e in examples for s in e.strategies} == {"<step>", "<orthogonal>"}
    assert TaskWorldReasoningGenerator(TaskWorldReasoningConfig(cells=("sub_3",))).strategies == ("<step>",
                                                                                                   "<orthogonal>")
    assert set(PipelineConfig().quietstar.taskworld_cells) <= {f"{family}_{level}" for family, level in CELLS}
    with pytest.raises(ValueError, match="choose some of add_2"):
        TaskWorldReasoningConfig(cells=("add_4",))
    with pytest.raises(ValueError, match="choose some of add_2"):
        TaskWorldReasoningConfig(cells=())


def test_the_criteria_read_the_task_world_set_and_the_answer_ablation():
    from forge.phases.quietstar import quietstar_criteria

    stages = {"before": {"taskworld_accuracy": 0.1, "commonsense_accuracy": None},
              "step2": {"taskworld_accuracy": 0.3, "taskworld_thinking_usage": 0.75,
                        "taskworld_accuracy_no_thinking": 0.2, "commonsense_accuracy": None}}
    criteria = quietstar_criteria(stages, 0.5, 0.9, 0.85, 400)
    assert criteria["accuracy_above_phase2"]["value"] == 0.3 and criteria["accuracy_above_phase2"]["threshold"] == 0.1
    assert criteria["thinking_usage"]["value"] == 0.75 and criteria["thinking_usage"]["met"]
    assert criteria["thoughts_ablation"]["value"] == pytest.approx(0.1) and criteria["thoughts_ablation"]["met"]
    stages["step2"]["taskworld_accuracy_no_thinking"] = 0.3  # thoughts removed, nothing lost: theater
    assert not quietstar_criteria(stages, 0.5, 0.9, 0.85, 400)["thoughts_ablation"]["met"]



def test_a_stage_reads_on_the_console_as_named_figures():
    from forge.phases.quietstar import stage_line

    figures = {"taskworld_accuracy": 0.11458, "taskworld_accuracy_no_thinking": 0.03125, "commonsense_accuracy": None,
               "heldout_perplexity": 76.1346}
    assert stage_line(figures) == ("taskworld accuracy 0.115, taskworld accuracy no thinking 0.031, commonsense "
                                   "accuracy not measured, heldout perplexity 76.1")
