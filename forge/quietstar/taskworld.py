"""Reasoning traces for the task world (``forge.data.taskworld``): Phase 3's source without a data folder.

Each example is a train-side task-world problem of one of ``CELLS``; its thinking block is the problem's
worked trace, every line a fact the task world computed:

- ``<mece>`` (comparisons): the answer is one of the two numbers, and exactly one is larger.
- ``<step>``: one step of the item's trace (``item.steps``): a column with its carry or borrow
  (``4+8+1=13``), a digit product with its running carry, or a digit-count / digit comparison.
- ``<orthogonal>``: the result checked by the inverse operation (432 = 347 + 85 checked as 432-85=347;
  a product by division; a comparison by the positive difference of the larger and the smaller).

The other seven strategies have nothing honest to say about exact arithmetic (there is no prior, no second
domain, nothing unstated), so this source uses the three above (``STRATEGIES``) and the data validation
asks for those. Held-out problems come from the task world's held-out side (never trained on).

Cells (``CELLS``): multi-digit problems, where a worked trace carries what the direct answer has to do in
one go (carries, borrows, the first differing digit): addition and subtraction of 2 and 3 digits, 2-digit by
1-digit products, 2-digit comparisons. Level 1 is one column (the trace is the answer); 4-digit sums and
longer products would not fit a thinking block into the tiny models' 64-token attention window. A run trains
and measures on the cells of ``TaskWorldReasoningConfig.cells`` (the tiny preset: 2-digit sums and differences).

Direct answers (``forge.data.taskworld.direct_pairs``): train-side problems of the curriculum's easy families and levels in the
task world's direct mode (question, then the answer line), the form the scoreboard's ``taskworld_easy`` asks
for. Step 1 mixes them into its training so the model keeps answering directly when its thoughts are
suppressed (trained on traces alone, a tiny model wrote "Work: ..." lines instead of an answer).
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Iterator, Sequence

from forge.data import taskworld
from forge.data.arithmetic import calculate
from forge.quietstar.data import ReasoningExample, make_example

CELLS: tuple[tuple[str, int], ...] = (("add", 2), ("add", 3), ("sub", 2), ("sub", 3), ("mul", 2), ("cmp", 2))
STRATEGIES: tuple[str, ...] = ("<step>", "<mece>", "<orthogonal>")
_INVERSE = {"+": "-", "-": "+", "*": "/"}


def moves(item: taskworld.TaskItem) -> list[tuple[str, str]]:
    """The strategy moves of ``item``'s worked trace (see module doc)."""
    if item.family == "cmp":
        first, second = re.findall(r"\d+", item.question)
        low, high = sorted((int(first), int(second)))
        return [("<mece>", f"{first} or {second}"), *(("<step>", step) for step in item.steps),
                ("<orthogonal>", f"{high}-{low}={calculate(f'{high}-{low}')}")]
    if item.family not in ("add", "sub", "mul"):
        raise ValueError(f"{item.id}: the task-world reasoning source covers add, sub, mul and cmp, not {item.family}")
    a, op, b = re.fullmatch(r"(\d+)([+\-*])(\d+)", item.calls[0]).groups()
    check = f"{item.answer}{_INVERSE[op]}{b}"
    return [*(("<step>", step) for step in item.steps), ("<orthogonal>", f"{check}={calculate(check)}")]


def reasoning_example(item: taskworld.TaskItem) -> ReasoningExample:
    """``item`` as a reasoning example: its question, its trace as a thinking block, its answer."""
    return make_example(id=f"taskworld/{item.id}", question=item.question, moves=moves(item), answer=item.answer,
                        source=f"taskworld-{item.cell}", generator=f"taskworld:{item.family}-trace")


def cell_items(n: int, *, split: str, seed: int, cells: Sequence[tuple[str, int]] = CELLS) -> list[taskworld.TaskItem]:
    """Up to ``n`` distinct problems of ``split``, the cells in turn (so any prefix is balanced)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    per_cell = -(-n // len(cells)) + 8  # a few spare: a 2-digit problem may also be drawn as a 3-digit one
    streams = [taskworld.generate_items(per_cell, split=split, seed=seed, families=[family], levels=[level],
                                        unique=True) for family, level in cells]
    items, seen = [], set()
    for item in itertools.chain.from_iterable(itertools.zip_longest(*streams)):
        if len(items) == n:
            break
        if item is not None and item.canonical not in seen:
            seen.add(item.canonical)
            items.append(item)
    return items


@dataclass
class TaskWorldReasoningConfig:
    """Which side of the task world to draw from, and from what seed."""

    heldout: bool = False  # False: the train side; True: the held-out side (evaluation only)
    seed: int = 0  # seeds the problem draws
    cells: tuple[str, ...] = tuple(f"{family}_{level}" for family, level in CELLS)  # "<family>_<level>", of CELLS

    def __post_init__(self) -> None:
        known = [f"{family}_{level}" for family, level in CELLS]
        unknown = [cell for cell in self.cells if cell not in known]
        if unknown or not self.cells:
            raise ValueError(f"task-world reasoning cells {list(self.cells)}: choose some of {', '.join(known)}")


class TaskWorldReasoningGenerator:
    """Task-world problems of the configured cells (all of ``CELLS`` by default) with their worked traces."""

    name = "taskworld"

    def __init__(self, config: TaskWorldReasoningConfig | None = None):
        self.config = config or TaskWorldReasoningConfig()

    @property
    def strategies(self) -> tuple[str, ...]:
        """The strategies the configured cells' traces use (``<mece>`` only in comparisons)."""
        has_cmp = any(cell.startswith("cmp_") for cell in self.config.cells)
        return tuple(s for s in STRATEGIES if has_cmp or s != "<mece>")

    def items(self, n: int) -> list[taskworld.TaskItem]:
        cells = [(cell.rsplit("_", 1)[0], int(cell.rsplit("_", 1)[1])) for cell in self.config.cells]
        return cell_items(n, split="heldout" if self.config.heldout else "train", seed=self.config.seed, cells=cells)

    def generate(self, n: int) -> Iterator[ReasoningExample]:
        """``n`` examples of distinct problems (fewer only if the cells run out), the cells in turn."""
        for item in self.items(n):
            yield reasoning_example(item)
