"""The task world: generated, verifiable problems with graded difficulty that a tiny model can learn.

Families (``FAMILIES``) and what ``level`` n (1 to ``MAX_LEVEL``) means:

- ``add``: a+b with operands below 10^n;
- ``sub``: a-b with b <= a below 10^n;
- ``mul``: a*b with 2 <= a < 10^n and 2 <= b < 10^max(1, n // 2) (1x1, 2x1, 3x1, 4x2, 5x2 digits);
- ``cmp``: which of two different numbers below 10^n is larger (the answer is that number);
- ``word``: a story of n steps (buy, give away, boxes of) on numbers below 100, from templates.

One text format for every family. A model reads ``prompt(item, mode)`` and writes ``target(item, mode)``::

    Show your work.                               <- instruction line (work and calculator modes)
    Question: What is 347+85?
    Work: 7+5+0=12, 4+8+1=13, 3+0+1=4             <- work mode only
    Answer: 432                                   <- normal digit order

Modes (``MODES``) are chosen by the instruction line, so a model trained on all of them reacts to it
visibly (prompt baking needs a prompt that changes the output):

- ``direct``: no instruction; the answer line only;
- ``work``: ``Show your work.``; the worked trace, then the answer. Column traces run least-significant
  digit first with the carry (``4+8+1=13``), the borrow (``14-8-0=6``: the top digit borrowed 10) or the
  running carry of a product (``4*5+3=23``); a step's last digit is the answer's digit of that column;
- ``calculator``: ``Use the calculator.``; the tool-use transcript of ``benchmarks.tooluse_problems``
  (one ``<calc>`` call per step with its ``<result>``, then ``<answer>N</answer>``).

The final answer of a generation (``extract_answer``) is the rest of the first ``Answer:`` line, or the
text of the first ``<answer>...</answer>``; ``is_correct`` compares it with the item's answer as exact
strings ("432" is right; "0432", "432.0", "431" are wrong).

Splits: a problem's canonical form (``TaskItem.canonical``) is its arithmetic, whatever its wording,
mode or, for + and *, operand order: "85+347", "347+85" and the story "Ann has 347 cards. She buys 85
more." are one problem. A problem is held out when ``forge.data.splits.heldout_score`` of its canonical
form is below ``HELDOUT_FRACTION``; ``generate_items`` draws from one side only, so train and held-out
items never share a problem, whatever the seeds (``check_disjoint`` verifies a pair of lists). The column
steps of a training trace may state a one-digit fact that is itself a held-out level-1 problem: digit
facts are what the traces teach.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable, Sequence

from forge.data.arithmetic import calculate
from forge.data.splits import heldout_score
from forge.data.tool_syntax import answer_text, call_text

FAMILIES = ("add", "sub", "mul", "cmp", "word")
MODES = ("direct", "work", "calculator")
MAX_LEVEL = 5
LEVELS = tuple(range(1, MAX_LEVEL + 1))
SPLIT_NAME = "taskworld"  # namespace of the held-out hash (forge.data.splits.heldout_score)
HELDOUT_FRACTION = 0.2
INSTRUCTIONS = {"direct": "", "work": "Show your work.\n", "calculator": "Use the calculator.\n"}
SPLITS = ("train", "heldout")

NAMES = ("Ann", "Ben", "Cai", "Dee", "Eli", "Fay", "Gus", "Ida", "Jon", "Kim")
OBJECTS = ("apples", "pens", "cards", "shells", "books", "stamps", "beads", "coins")


@dataclass(frozen=True)
class TaskItem:
    """One problem of the world."""

    family: str  # one of FAMILIES
    level: int  # difficulty, 1..MAX_LEVEL
    question: str  # the text after "Question: "
    answer: str  # the exact final answer
    steps: tuple[str, ...]  # the worked trace, one checkable step each ("4+8+1=13", "4<8")
    calls: tuple[str, ...]  # calculator expressions of the calculator transcript, in order
    canonical: str  # the problem's arithmetic, independent of wording and operand order of + and *

    @property
    def id(self) -> str:
        return f"{self.family}/{self.level}/{self.canonical}"

    @property
    def cell(self) -> str:
        """The (family, level) group name used in per-group metrics, e.g. ``add_2``."""
        return f"{self.family}_{self.level}"


# ---------------------------------------------------------------- canonical forms and the split

def canonical_step(a: int, op: str, b: int) -> str:
    """``a op b`` with the operands of + and * sorted."""
    if op in "+*":
        a, b = sorted((a, b))
    return f"{a}{op}{b}"


def is_heldout(canonical: str, heldout_fraction: float = HELDOUT_FRACTION) -> bool:
    """Whether the problem with this canonical form belongs to the held-out side."""
    return heldout_score(SPLIT_NAME, canonical) < heldout_fraction


def check_disjoint(train: Sequence[TaskItem], heldout: Sequence[TaskItem]) -> None:
    """Raise ValueError naming the shared problems if any canonical form is on both sides."""
    shared = sorted({item.canonical for item in train} & {item.canonical for item in heldout})
    if shared:
        raise ValueError(f"{len(shared)} problems are in both the train and the held-out items "
                         f"(first: {shared[:5]}): draw each side with generate_items(split=...)")


# ---------------------------------------------------------------- families

def _digits(value: int) -> list[int]:
    """Decimal digits, least significant first."""
    return [int(d) for d in reversed(str(value))]


def _add_steps(a: int, b: int) -> list[str]:
    da, db = _digits(a), _digits(b)
    width = max(len(da), len(db))
    da, db = da + [0] * (width - len(da)), db + [0] * (width - len(db))
    steps, carry = [], 0
    for x, y in zip(da, db):
        total = x + y + carry
        steps.append(f"{x}+{y}+{carry}={total}")
        carry = total // 10
    return steps


def _sub_steps(a: int, b: int) -> list[str]:
    da, db = _digits(a), _digits(b)
    db += [0] * (len(da) - len(db))
    steps, borrow = [], 0
    for x, y in zip(da, db):
        if x - y - borrow >= 0:
            steps.append(f"{x}-{y}-{borrow}={x - y - borrow}")
            borrow = 0
        else:
            steps.append(f"1{x}-{y}-{borrow}={10 + x - y - borrow}")
            borrow = 1
    return steps


def _mul_digit_steps(a: int, digit: int) -> list[str]:
    steps, carry = [], 0
    for x in _digits(a):
        product = x * digit + carry
        steps.append(f"{x}*{digit}+{carry}={product}")
        carry = product // 10
    return steps


def _mul_steps(a: int, b: int) -> list[str]:
    if b < 10:
        return _mul_digit_steps(a, b)
    steps, partials = [], []
    for place, digit in enumerate(_digits(b)):
        steps += _mul_digit_steps(a, digit) + [f"{a}*{digit}={a * digit}"]
        partials.append(a * digit * 10 ** place)
    steps.append("+".join(map(str, partials)) + f"={a * b}")
    return steps


def _cmp_steps(a: int, b: int) -> list[str]:
    sa, sb = str(a), str(b)
    if len(sa) != len(sb):
        return [f"{len(sa)} digits vs {len(sb)} digits"]
    steps = [f"{len(sa)} digits vs {len(sb)} digits"]
    for x, y in zip(sa, sb):
        relation = "<" if x < y else ">" if x > y else "="
        steps.append(f"{x}{relation}{y}")
        if relation != "=":
            break
    return steps


def _below(rng: random.Random, digits: int, low: int = 0) -> int:
    return rng.randint(low, 10 ** digits - 1)


def _arithmetic(family: str, level: int, rng: random.Random) -> TaskItem:
    if family == "add":
        a, b = _below(rng, level), _below(rng, level)
        op, steps = "+", _add_steps(a, b)
    elif family == "sub":
        a, b = sorted((_below(rng, level), _below(rng, level)), reverse=True)
        op, steps = "-", _sub_steps(a, b)
    else:
        a, b = _below(rng, level, 2), _below(rng, max(1, level // 2), 2)
        op, steps = "*", _mul_steps(a, b)
    expression = f"{a}{op}{b}"
    value = a + b if op == "+" else a - b if op == "-" else a * b  # check_item verifies it with the calculator
    return TaskItem(family, level, f"What is {expression}?", str(value), tuple(steps),
                    (expression,), canonical_step(a, op, b))


def _compare(level: int, rng: random.Random) -> TaskItem:
    a = _below(rng, level)
    b = a
    while b == a:
        b = _below(rng, level)
    low, high = sorted((a, b))
    return TaskItem("cmp", level, f"Which is larger, {a} or {b}?", str(high), tuple(_cmp_steps(a, b)),
                    (f"{b}-{a}",), f"cmp:{low},{high}")


def _word(level: int, rng: random.Random) -> TaskItem:
    name, thing = rng.choice(NAMES), rng.choice(OBJECTS)
    ops: list[tuple[int, str, int]] = []
    if rng.random() < 1 / 3:
        boxes, per_box = rng.randint(2, 9), rng.randint(2, 12)
        sentences = [f"{name} has {boxes} boxes of {per_box} {thing}."]
        ops.append((boxes, "*", per_box))
        value = boxes * per_box
    else:
        value = rng.randint(2, 99)
        sentences = [f"{name} has {value} {thing}."]
    while len(ops) < level:
        if value > 1 and rng.random() < 0.5:
            amount = rng.randint(1, min(value - 1, 99))
            sentences.append(f"{name} gives away {amount}.")
            ops.append((value, "-", amount))
            value -= amount
        else:
            amount = rng.randint(1, 99)
            sentences.append(f"{name} buys {amount} more.")
            ops.append((value, "+", amount))
            value += amount
    sentences.append(f"How many {thing} does {name} have now?")
    steps = tuple(f"{a}{op}{b}={a + b if op == '+' else a - b if op == '-' else a * b}" for a, op, b in ops)
    return TaskItem("word", level, " ".join(sentences), str(value), steps,
                    tuple(f"{a}{op}{b}" for a, op, b in ops),
                    ";".join(canonical_step(a, op, b) for a, op, b in ops))


GENERATORS: dict[str, Callable[[int, random.Random], TaskItem]] = {
    "add": lambda level, rng: _arithmetic("add", level, rng),
    "sub": lambda level, rng: _arithmetic("sub", level, rng),
    "mul": lambda level, rng: _arithmetic("mul", level, rng),
    "cmp": _compare,
    "word": _word,
}


def _check_choice(families: Sequence[str], levels: Sequence[int]) -> None:
    unknown = [family for family in families if family not in FAMILIES]
    if unknown or not families:
        raise ValueError(f"task world families {list(families)}: choose some of {', '.join(FAMILIES)}")
    bad = [level for level in levels if level not in LEVELS]
    if bad or not levels:
        raise ValueError(f"task world levels {list(levels)}: choose some of {list(LEVELS)}")


def generate_item(family: str, level: int, rng: random.Random, split: str = "train",
                  heldout_fraction: float = HELDOUT_FRACTION) -> TaskItem:
    """One problem of ``family`` at ``level`` from ``split`` ("train" or "heldout"), drawn with ``rng``."""
    _check_choice([family], [level])
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: use 'train' or 'heldout'")
    want_heldout = split == "heldout"
    for _ in range(10_000):
        item = GENERATORS[family](level, rng)
        if is_heldout(item.canonical, heldout_fraction) == want_heldout:
            return item
    raise RuntimeError(f"no {split} problem of {family} level {level} found in 10000 draws: "
                       f"heldout_fraction={heldout_fraction} leaves that side empty")


def generate_items(n: int, *, split: str = "train", seed: int = 0, families: Sequence[str] = FAMILIES,
                   levels: Sequence[int] = LEVELS, unique: bool = False,
                   heldout_fraction: float = HELDOUT_FRACTION) -> list[TaskItem]:
    """``n`` problems of ``split``, each of a uniformly drawn (family, level), deterministic for the arguments.

    ``unique``: no two items share a canonical form; a (family, level) whose side holds fewer problems
    than asked for (level-1 addition has 55) gives what it has, so fewer than ``n`` items may come back.
    """
    _check_choice(families, levels)
    if n < 0:
        raise ValueError(f"n={n} must be >= 0")
    rng = random.Random(f"{SPLIT_NAME}/{split}/{seed}")
    cells = [(family, level) for family in families for level in levels]
    items: list[TaskItem] = []
    seen: set[str] = set()
    misses = 0
    while len(items) < n and misses < 20 * n + 100:  # enough to exhaust a 55-problem side
        family, level = cells[rng.randrange(len(cells))]
        item = generate_item(family, level, rng, split, heldout_fraction)
        if unique and item.canonical in seen:
            misses += 1
            continue
        seen.add(item.canonical)
        items.append(item)
    return items


def heldout_set(per_cell: int, *, seed: int = 1234, families: Sequence[str] = FAMILIES,
                levels: Sequence[int] = LEVELS) -> list[TaskItem]:
    """A fixed evaluation set: up to ``per_cell`` held-out problems per (family, level), no problem twice
    (a level-2 sum may be a level-1 one, "3+4"; it counts in the first cell that drew it)."""
    items: list[TaskItem] = []
    seen: set[str] = set()
    for family in families:
        for level in levels:
            for item in generate_items(per_cell, split="heldout", seed=seed, families=[family], levels=[level],
                                       unique=True):
                if item.canonical not in seen:
                    seen.add(item.canonical)
                    items.append(item)
    return items


# ---------------------------------------------------------------- text

def prompt(item: TaskItem, mode: str = "direct") -> str:
    """What the model reads: the mode's instruction line, then ``Question: ...`` and a newline."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: use one of {', '.join(MODES)}")
    return f"{INSTRUCTIONS[mode]}Question: {item.question}\n"


def target(item: TaskItem, mode: str = "direct") -> str:
    """What the model should write after ``prompt(item, mode)``."""
    if mode == "calculator":
        return "".join(call_text("calc", expression, calculate(expression)) for expression in item.calls) + \
            answer_text(item.answer)
    if mode == "work":
        return f"Work: {', '.join(item.steps)}\nAnswer: {item.answer}\n"
    if mode == "direct":
        return f"Answer: {item.answer}\n"
    raise ValueError(f"mode {mode!r}: use one of {', '.join(MODES)}")


def text(item: TaskItem, mode: str = "direct") -> str:
    """A training document: prompt and target."""
    return prompt(item, mode) + target(item, mode)


def training_texts(n: int, seed: int = 0, *, families: Sequence[str] = FAMILIES, levels: Sequence[int] = LEVELS,
                   modes: Sequence[str] = MODES) -> list[str]:
    """``n`` training documents from the train side, each in a mode drawn uniformly from ``modes``."""
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown or not modes:
        raise ValueError(f"modes {list(modes)}: choose some of {', '.join(MODES)}")
    rng = random.Random(f"{SPLIT_NAME}/modes/{seed}")
    return [text(item, modes[rng.randrange(len(modes))])
            for item in generate_items(n, split="train", seed=seed, families=families, levels=levels)]


# The families and levels a 0.94M Cognate model learned above chance in 410k tokens (docs/BENCHMARKS.md, task world).
EASY_FAMILIES = ("add", "cmp")
EASY_LEVELS = (1, 2)


def guess_accuracy(family: str, level: int) -> float:
    """How often a uniform guess among the answers a problem of ``family`` at ``level`` can have is right: the
    floor that "above chance" means. add: one of the 2*10^n - 1 sums; sub: one of the 10^n differences; cmp:
    either of the two numbers shown. mul and word answers have no such uniform range, so they have none."""
    _check_choice([family], [level])
    if family == "add":
        return 1.0 / (2 * 10 ** level - 1)
    if family == "sub":
        return 1.0 / 10 ** level
    if family == "cmp":
        return 0.5
    raise ValueError(f"family {family!r} has no uniform guess (its answers do not span a range); "
                     "add, sub and cmp have one")


# Modes of the curriculum's documents, drawn uniformly from this tuple: direct in 8 of 10 (the learning curve
# above was measured in direct mode; a direct document is 41 characters, a work one 82, a calculator one 106,
# so uniform modes would give direct 18% of the task-world text), work and calculator in 1 each, so that the
# instructions still change what the model writes.
CURRICULUM_MODES = ("direct",) * 8 + ("work", "calculator")


def curriculum_texts(n: int, seed: int = 0) -> list[str]:
    """The curriculum dataset ``taskworld`` (forge.data.sources): train-side documents of ``EASY_FAMILIES`` at
    ``EASY_LEVELS``, in the modes of ``CURRICULUM_MODES``."""
    return training_texts(n, seed, families=EASY_FAMILIES, levels=EASY_LEVELS, modes=CURRICULUM_MODES)


def direct_curriculum_texts(n: int, seed: int = 0) -> list[str]:
    """The curriculum dataset ``taskworld_direct``: the same problems as ``curriculum_texts``, all in direct mode
    (question, then the answer), the setting of the learning curve in docs/BENCHMARKS.md."""
    return training_texts(n, seed, families=EASY_FAMILIES, levels=EASY_LEVELS, modes=("direct",))


def easy_train_items(n: int, *, seed: int) -> list[TaskItem]:
    """``n`` distinct train-side problems of ``EASY_FAMILIES`` at ``EASY_LEVELS``: the cells of the scoreboard's
    ``taskworld_easy``, never one of its (held-out) problems."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return generate_items(n, split="train", seed=seed, families=EASY_FAMILIES, levels=EASY_LEVELS, unique=True)


def direct_pair(item: TaskItem) -> tuple[str, str]:
    """``item`` as (prompt, target) in direct mode, the form the scoreboard asks:
    ``"Question: What is 3+4?\n"``, ``"Answer: 7\n"``."""
    return prompt(item, "direct"), target(item, "direct")


def direct_pairs(n: int, *, seed: int) -> list[tuple[str, str]]:
    """:func:`easy_train_items` as :func:`direct_pair`."""
    return [direct_pair(item) for item in easy_train_items(n, seed=seed)]


# ---------------------------------------------------------------- scoring

_ANSWER_LINE = re.compile(r"Answer:[ \t]*([^\n]*)")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def extract_answer(generation: str) -> str | None:
    """The final answer in a generation: the rest of the first ``Answer:`` line or the first
    ``<answer>`` element, whichever comes first, stripped; None when there is neither."""
    matches = [m for m in (_ANSWER_LINE.search(generation), _ANSWER_TAG.search(generation)) if m]
    if not matches:
        return None
    return min(matches, key=lambda m: m.start()).group(1).strip()


def is_correct(answer: str, generation: str) -> bool:
    """Exact match of the generation's final answer with ``answer`` (an item's ``answer``)."""
    return extract_answer(generation) == answer


# ---------------------------------------------------------------- verification

_EQUATION = re.compile(r"^([0-9+\-*]+)=(\d+)$")
_DIGIT_RELATION = re.compile(r"^(\d)([<>=])(\d)$")
_LENGTHS = re.compile(r"^(\d+) digits vs (\d+) digits$")


def _true_step(step: str) -> bool:
    if match := _EQUATION.match(step):
        return calculate(match.group(1)) == match.group(2)
    if match := _DIGIT_RELATION.match(step):
        x, relation, y = match.groups()
        return {"<": x < y, ">": x > y, "=": x == y}[relation]
    return False


def check_item(item: TaskItem) -> None:
    """Raise ValueError unless every step holds and the trace, the calls and the answer agree."""
    false = [step for step in item.steps if not _true_step(step) and not _LENGTHS.match(step)]
    if false:
        raise ValueError(f"{item.id}: steps that do not hold: {false}")
    if item.family == "cmp":
        a, b = map(int, re.findall(r"\d+", item.question))
        lengths = _LENGTHS.match(item.steps[0])
        if lengths is None or lengths.groups() != (str(len(str(a))), str(len(str(b)))):
            raise ValueError(f"{item.id}: the trace does not start with the digit counts")
        pairs = [(step[0], step[2]) for step in item.steps[1:]]
        if pairs != list(zip(str(a), str(b)))[:len(pairs)] or (pairs and pairs[-1][0] == pairs[-1][1]):
            raise ValueError(f"{item.id}: the digit comparisons are not those of {a} and {b} up to their first "
                             "difference")
        expected = str(max(a, b))
    else:
        expected = calculate(item.calls[-1])
        column_trace = item.family in ("add", "sub") or (
            item.family == "mul" and int(item.calls[0].split("*")[1]) < 10)
        if column_trace:
            # A column trace: the last digit of each step, then the last step's carry, compose the answer.
            digits = [step.split("=")[1][-1] for step in item.steps]
            carry = item.steps[-1].split("=")[1][:-1]
            composed = (carry + "".join(reversed(digits))).lstrip("0") or "0"
            if composed != expected:
                raise ValueError(f"{item.id}: the column digits compose {composed}, not {expected}")
        elif item.family in ("word", "mul") and item.steps[-1].split("=")[1] != expected:
            raise ValueError(f"{item.id}: the last step gives {item.steps[-1]}, not {expected}")
    if item.answer != expected:
        raise ValueError(f"{item.id}: answer {item.answer!r}, expected {expected!r}")
