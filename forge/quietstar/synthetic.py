"""Reasoning traces for generated problems: the no-data-folder source of Phase 3 (the tiny preset offline).

Every problem is generated from a seed with its answer computed by ``forge.data.arithmetic``, and every
strategy line states something the generator computed or knows by construction:

- ``<step>``: one operation of the solution, evaluated.
- ``<orthogonal>``: the result checked by the inverse operation (c = a - b checked as c + b = a).
- ``<doubt>`` + ``<correct>``: the last operation re-computed; ``<correct>`` states the verified result.
- ``<mece>``: the complete set of answers the question allows (even / odd; yes / no).
- ``<falsify>``: a claimed product is tested: the claim is false when the product differs.
- ``<bayesian>``: a probability from counts: the prior of drawing a colour is its share of the bag.
- ``<expert>``: a unit fact the conversion rests on (an hour has 60 minutes).
- ``<multidomain>``: the problem mixes unit domains (money and time).
- ``<uncertain>``: the question leaves a quantity unstated, so the answer is "unknown".

Each example is labelled ``synthetic:<kind>``. Problems are split into train and held-out sides by the
stable hash of the question (``forge.data.splits.heldout_score``), so no held-out question is trained on.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterator

from forge.data.arithmetic import calculate
from forge.data.splits import heldout_score
from forge.quietstar.data import ReasoningExample, make_example

SPLIT_NAME = "quietstar-synthetic"
NAMES = ("Ann", "Ben", "Cai", "Dee", "Eli", "Fay", "Gus", "Ida", "Jon", "Kim")
ITEMS = ("apples", "pens", "cards", "shells", "books", "stamps", "beads", "coins")
Moves = list[tuple[str, str]]
Problem = tuple[str, Moves, str]  # question, moves, answer


def _two_step(rng: random.Random) -> Problem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    boxes, per_box = rng.randint(2, 9), rng.randint(2, 9)
    total = int(calculate(f"{boxes}*{per_box}"))
    lost = rng.randint(1, total - 1)
    left = calculate(f"{total}-{lost}")
    question = f"{name} has {boxes} boxes of {per_box} {item} and gives away {lost}. How many {item} are left?"
    moves = [("<step>", f"{boxes}*{per_box} = {total}"), ("<step>", f"{total}-{lost} = {left}"),
             ("<orthogonal>", f"{left}+{lost} = {calculate(f'{left}+{lost}')}, which is {total}"),
             ("<doubt>", f"recompute {total}-{lost}"), ("<correct>", f"{total}-{lost} = {left} holds")]
    return question, moves, left


def _parity(rng: random.Random) -> Problem:
    a, b = rng.randint(2, 60), rng.randint(2, 60)
    total = int(calculate(f"{a}+{b}"))
    answer = "even" if total % 2 == 0 else "odd"
    question = f"Is {a}+{b} even or odd?"
    moves = [("<mece>", "a whole number is either even or odd"), ("<step>", f"{a}+{b} = {total}"),
             ("<step>", f"{total} mod 2 = {total % 2}")]
    return question, moves, answer


def _claim(rng: random.Random) -> Problem:
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    product = int(calculate(f"{a}*{b}"))
    claimed = product + rng.choice((0, 0, 1, -1, 2, a))
    name = rng.choice(NAMES)
    answer = "yes" if claimed == product else "no"
    question = f"{name} says {a}*{b} = {claimed}. Is that right?"
    verdict = "the claim survives the test" if claimed == product else "the claim is false"
    moves = [("<mece>", "the claim is right or wrong"),
             ("<falsify>", f"{a}*{b} = {product}, so {verdict}")]
    return question, moves, answer


def _draw(rng: random.Random) -> Problem:
    red, blue = rng.randint(1, 9), rng.randint(1, 9)
    total = int(calculate(f"{red}+{blue}"))
    chance = calculate(f"{red}/{total}")
    question = f"A bag holds {red} red and {blue} blue balls. One ball is drawn at random. What is the chance it is red?"
    moves = [("<step>", f"{red}+{blue} = {total} balls"),
             ("<bayesian>", f"each ball is equally likely, so the prior of red is {red}/{total} = {chance}")]
    return question, moves, chance


def _hours(rng: random.Random) -> Problem:
    hours = rng.randint(2, 9)
    minutes = calculate(f"{hours}*60")
    question = f"How many minutes are in {hours} hours?"
    moves = [("<expert>", "an hour has 60 minutes"), ("<step>", f"{hours}*60 = {minutes}")]
    return question, moves, minutes


def _wage(rng: random.Random) -> Problem:
    name, rate, hours = rng.choice(NAMES), rng.randint(5, 20), rng.randint(2, 8)
    pay = calculate(f"{rate}*{hours}")
    question = f"{name} earns ${rate} per hour and works {hours} hours. How many dollars does {name} earn?"
    moves = [("<multidomain>", "the problem mixes money and time"), ("<step>", f"{rate}*{hours} = {pay}"),
             ("<orthogonal>", f"{pay}/{hours} = {calculate(f'{pay}/{hours}')}, which is {rate}")]
    return question, moves, pay


def _unknown(rng: random.Random) -> Problem:
    name, item, more = rng.choice(NAMES), rng.choice(ITEMS), rng.randint(2, 9)
    question = f"{name} has some {item} and finds {more} more. How many {item} does {name} have now?"
    moves = [("<step>", f"the total is the starting number + {more}"),
             ("<uncertain>", "the starting number is not given, so the total cannot be derived")]
    return question, moves, "unknown"


KINDS: dict[str, Callable[[random.Random], Problem]] = {
    "two-step": _two_step, "parity": _parity, "claim": _claim, "draw": _draw, "hours": _hours,
    "wage": _wage, "unknown": _unknown,
}


@dataclass
class SyntheticConfig:
    """Which side of the split to generate, and from what seed."""

    heldout: bool = False  # False: the train side; True: the held-out side (evaluation only)
    heldout_fraction: float = 0.2  # share of distinct questions kept for evaluation
    seed: int = 0  # seeds the problem draws


class SyntheticReasoningGenerator:
    """Generated arithmetic, probability and unit problems with traces (see module doc)."""

    name = "synthetic"

    def __init__(self, config: SyntheticConfig | None = None):
        self.config = config or SyntheticConfig()
        if not 0.0 < self.config.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {self.config.heldout_fraction}")

    def generate(self, n: int) -> Iterator[ReasoningExample]:
        """``n`` distinct examples on this side of the split, the kinds in turn."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        rng = random.Random(self.config.seed)
        seen: set[str] = set()
        kinds = list(KINDS.items())
        produced, attempts = 0, 0
        while produced < n:
            attempts += 1
            if attempts > 50 * (n + 10):
                raise ValueError(f"only {produced} distinct synthetic problems found on this side of the split; "
                                 f"ask for fewer than {n}")
            kind, build = kinds[attempts % len(kinds)]
            question, moves, answer = build(rng)
            side_heldout = heldout_score(SPLIT_NAME, question) < self.config.heldout_fraction
            if question in seen or side_heldout != self.config.heldout:
                continue
            seen.add(question)
            produced += 1
            yield make_example(id=f"synthetic/{kind}/{len(seen)}", question=question, moves=moves,
                               answer=str(answer), source=f"synthetic-{kind}", generator=f"synthetic:{kind}")
