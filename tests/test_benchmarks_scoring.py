"""Scoring rules: answer extraction, MATH normalisation, pass@k, multiple-choice metrics."""
import itertools
import math

import pytest

from benchmarks import scoring
from benchmarks.harness import TASK_WEIGHTS, TaskResult, aggregate_score, item_scores


def test_gsm8k_strict_and_flexible_extraction():
    generation = "She has 3 + 4 = 7 apples, then 1,200 more.\n#### 1,207\n\nQuestion: next"
    assert scoring.extract_strict(generation) == "1,207"
    assert scoring.extract_flexible("The answer is $1,234.50, not 7") == "7"
    assert scoring.extract_flexible("It costs $1,234.") == "$1,234."
    assert scoring.extract_strict("no marker 42") == scoring.INVALID
    assert scoring.extract_flexible("no digits at all") == scoring.INVALID
    reference = "Janet sells 9 eggs.\n#### 18"
    assert scoring.number_match("$18.", reference)
    assert scoring.number_match("1,207", "#### 1207")
    assert not scoring.number_match("18.0", reference)  # lm-eval's exact match is textual
    assert scoring.number_match("18.0", "18", numeric=True)
    assert not scoring.number_match(scoring.INVALID, reference, numeric=True)


def test_math_boxed_answer_and_normalisation():
    solution = r"So $x = \frac{1}{2}$, hence $\boxed{\frac{1}{2}}$ and not \boxed{3}? No: \boxed{\dfrac12}"
    assert scoring.math_reference_answer(solution) == r"\dfrac12"
    assert scoring.math_equivalent(r"\dfrac12", r"\frac{1}{2}")
    assert scoring.math_equivalent("0.5", r"\frac{1}{2}")
    assert scoring.math_equivalent("1/2", r"\frac{1}{2}")
    assert scoring.math_equivalent(r"10^\circ", "10")
    assert scoring.math_equivalent(r"\left( 3, 4 \right)", "(3,4)")
    assert scoring.math_equivalent(r"x = 5", "5")
    assert scoring.math_equivalent(r"\sqrt2", r"\sqrt{2}")
    assert not scoring.math_equivalent("3", "4")
    assert scoring.extract_math_answer(r"We get \boxed{7}. Problem:") == "7"
    assert scoring.extract_math_answer("The answer is $42$ dollars") == "42"
    with pytest.raises(ValueError, match="boxed"):
        scoring.math_reference_answer("no answer here")


def test_pass_at_k_matches_brute_force_enumeration():
    for n, c, k in [(5, 2, 1), (5, 2, 3), (10, 3, 5), (6, 0, 2), (4, 4, 4), (7, 6, 2)]:
        samples = [True] * c + [False] * (n - c)
        subsets = list(itertools.combinations(range(n), k))
        expected = sum(any(samples[i] for i in subset) for subset in subsets) / len(subsets)
        assert math.isclose(scoring.pass_at_k(n, c, k), expected, rel_tol=1e-9)
    with pytest.raises(ValueError, match="num_samples"):
        scoring.pass_at_k(1, 0, 10)


def test_multiple_choice_acc_and_length_normalised_acc():
    choices = ["a", "a much longer answer"]
    # Summed log-likelihood favours the short choice; per character the long one.
    metrics = scoring.multiple_choice_metrics([-2.0, -10.0], choices, gold=1)
    assert metrics == {"acc": 0.0, "acc_norm": 1.0}
    assert scoring.multiple_choice_metrics([-1.0, -1.0], ["x", "y"], gold=0)["acc"] == 1.0  # ties: first


def test_aggregate_score_uses_phase6_weights_and_needs_every_task():
    assert math.isclose(sum(TASK_WEIGHTS.values()), 1.0)
    assert TASK_WEIGHTS["mmlu"] == 0.20 and TASK_WEIGHTS["humaneval"] == 0.20
    assert math.isclose(TASK_WEIGHTS["arc_easy"] + TASK_WEIGHTS["arc_challenge"], 0.15)
    results = {name: TaskResult(task=name, metrics={"m": 1.0 if name == "mmlu" else 0.0}, primary_metric="m",
                                n_items=1, wall_s=0.0) for name in TASK_WEIGHTS}
    assert math.isclose(aggregate_score(results), 0.20)
    del results["math"]
    with pytest.raises(ValueError, match="math"):
        aggregate_score(results)


def test_item_scores_average_to_the_tasks_primary_metric_and_need_the_samples():
    code = TaskResult(task="humaneval", metrics={"pass@1": 0.375}, primary_metric="pass@1", n_items=2, wall_s=0.0,
                      samples=[{"completions": ["a", "b", "c", "d"], "correct": 1},
                               {"completions": ["a", "b", "c", "d"], "correct": 2}])
    assert item_scores("humaneval", code) == [0.25, 0.5]  # pass@1 of 1 and 2 passing samples of 4
    choice = TaskResult(task="mmlu", metrics={"acc": 0.5}, primary_metric="acc", n_items=2, wall_s=0.0,
                        samples=[{"acc": 1.0, "acc_norm": 0.0}, {"acc": 0.0, "acc_norm": 1.0}])
    assert item_scores("mmlu", choice) == [1.0, 0.0]  # MMLU's primary metric is acc
    with pytest.raises(ValueError, match="log_samples=True"):
        item_scores("mmlu", TaskResult(task="mmlu", metrics={"acc": 0.5}, primary_metric="acc", n_items=2, wall_s=0.0))
