"""The generated-problem reasoning source (Phase 3 without a data folder)."""
from __future__ import annotations

import re

import pytest

from forge.data.arithmetic import evaluate
from forge.quietstar.data import validate_examples
from forge.quietstar.synthetic import KINDS, SyntheticConfig, SyntheticReasoningGenerator
from forge.quietstar.tokens import STRATEGY_TOKENS


def test_passes_the_spec_validation_with_every_strategy():
    examples = list(SyntheticReasoningGenerator().generate(700))
    report = validate_examples(examples, min_examples=700)
    assert report.passed, report.failures()
    assert {s for e in examples for s in e.strategies} == set(STRATEGY_TOKENS)
    assert {e.generator for e in examples} == {f"synthetic:{kind}" for kind in KINDS}
    assert len({e.question for e in examples}) == len(examples)


def test_train_and_heldout_sides_never_share_a_question():
    train = {e.question for e in SyntheticReasoningGenerator().generate(1500)}
    heldout = {e.question for e in SyntheticReasoningGenerator(SyntheticConfig(heldout=True)).generate(300)}
    assert train and heldout and not train & heldout


def test_every_computed_line_holds():
    """Each 'a op b = c' in a trace is re-evaluated; a wrong line fails the test."""
    checked = 0
    for example in SyntheticReasoningGenerator(SyntheticConfig(seed=3)).generate(400):
        for expression, value in re.findall(r"(\d+[-+*/]\d+) = ([\d.]+)", example.thinking):
            assert evaluate(expression) == pytest.approx(float(value), rel=1e-5), (example.id, expression, value)
            checked += 1
    assert checked > 300


def test_answers_follow_from_the_question():
    for example in SyntheticReasoningGenerator(SyntheticConfig(seed=1)).generate(200):
        if example.source == "synthetic-claim":
            a, b, claimed = map(int, re.search(r"(\d+)\*(\d+) = (\d+)", example.question).groups())
            assert example.answer == ("yes" if a * b == claimed else "no")
        if example.source == "synthetic-unknown":
            assert example.answer == "unknown"


def test_asking_for_more_than_one_side_holds_is_a_clear_error():
    with pytest.raises(ValueError, match="distinct synthetic problems"):
        list(SyntheticReasoningGenerator(SyntheticConfig(heldout=True, heldout_fraction=0.001)).generate(3000))
