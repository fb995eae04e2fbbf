"""Problems of the tool-use benchmark, their held-out / rotation sides and reference transcripts.

Sources (``SOURCES``):

- ``easy``: one-operation arithmetic whose operands are in the question, generated from a fixed seed;
  writing ``<calc>a+b</calc>`` and copying the result solves it, so a tiny model gets a signal;
- ``hard``: the task world's multi-digit problems (``forge.data.taskworld``: 3x1 and 4x2 digit products,
  sums of 4-digit numbers) in its wording, "What is 6232*45?": beyond what a tiny model computes itself,
  while ``<calc>6232*45</calc>`` copies the question and the result is the answer, so the calculator pays;
- ``svamp``, ``gsm8k``: arithmetic word problems (final answer compared as a number);
- ``mbpp``: Python functions checked by the problem's tests in the sandbox.

Every source has one train side and one held-out side, the partition ``forge.data.splits`` keeps for
pretraining (GSM8K, MBPP: their train and test splits; SVAMP: the stable hash; easy: the same hash on
the question; hard: the task world's split, so no held-out hard problem is in any task-world training
text). Phase 6 draws a new ``rotation_subset`` of the train side per iteration and keeps the held-out side
for validation.
"""
from __future__ import annotations

import os
import random
import re
from dataclasses import asdict, dataclass
from typing import Literal, Sequence

from forge.data import splits, taskworld
from forge.data.tool_syntax import answer_text, call_text

from benchmarks.sandbox import SandboxLimits, run_programs
from benchmarks.tasks import select_docs
from benchmarks.tooluse_tools import CalculatorError, calculate, python_output, python_program

SOURCES = ("easy", "hard", "svamp", "gsm8k", "mbpp")
ProblemKind = Literal["arithmetic", "code"]

EASY_POOL_SIZE = 2000  # easy problems generated (before the train / held-out partition)
EASY_POOL_SEED = 0  # fixed: the pool, and so both sides, never change
EASY_DATASET = "tooluse_easy"  # partition name of the easy pool in forge.data.splits
# Hard problems per side and task-world (family, level): 3x1 and 4x2 digit products, sums of 4-digit numbers.
HARD_CELLS = {("mul", 3): 300, ("mul", 4): 400, ("add", 4): 300}
HARD_POOL_SEED = 0  # fixed: the pool, and so both sides, never change

# (question template, operator); operands a > b keep subtraction non-negative.
EASY_TEMPLATES: tuple[tuple[str, str], ...] = (
    ("What is {a} plus {b}?", "+"),
    ("Tom has {a} apples and buys {b} more. How many apples does Tom have now?", "+"),
    ("What is {a} minus {b}?", "-"),
    ("A shelf holds {a} books and {b} are taken away. How many books are left?", "-"),
    ("What is {a} times {b}?", "*"),
    ("There are {a} boxes with {b} pens in each box. How many pens are there?", "*"),
)


@dataclass(frozen=True)
class ToolProblem:
    """One benchmark item."""

    id: str  # "<source>/<item id>", unique across sources
    source: str  # one of SOURCES
    kind: ProblemKind  # arithmetic: numeric final answer; code: a function checked by tests
    question: str  # what the model is asked (for code: the task and its tests)
    answer: str  # reference final answer (arithmetic); "" for code
    tests: tuple[str, ...] = ()  # code: assert statements run after the model's code
    test_setup: str = ""  # code: run before the tests
    reference: str = ""  # a worked solution: GSM8K's annotated steps, SVAMP's equation, MBPP's code

    def to_dict(self) -> dict:
        return asdict(self)


def easy_problems() -> list[ToolProblem]:
    """The fixed pool of one-operation problems (both sides; ``load_problems`` partitions it)."""
    rng = random.Random(EASY_POOL_SEED)
    problems, seen = [], set()
    while len(problems) < EASY_POOL_SIZE:
        template, op = EASY_TEMPLATES[rng.randrange(len(EASY_TEMPLATES))]
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        if op == "*":
            b = rng.randint(2, 12)
        a, b = max(a, b), min(a, b)
        question = template.format(a=a, b=b)
        if question in seen:
            continue
        seen.add(question)
        expression = f"{a}{op}{b}"
        problems.append(ToolProblem(id=f"easy/{len(problems)}", source="easy", kind="arithmetic",
                                    question=question, answer=calculate(expression), reference=expression))
    return problems


def hard_problems(heldout: bool) -> list[ToolProblem]:
    """One side of the task world's multi-digit problems (``HARD_CELLS``), in its wording ("What is 6232*45?").
    The task world draws operands below 10^level, so a problem is kept only when its larger operand has
    ``level`` digits (no "7*5" among the 3x1 products)."""
    split = "heldout" if heldout else "train"
    items = []
    for (family, level), count in HARD_CELLS.items():
        drawn = taskworld.generate_items(2 * count, split=split, seed=HARD_POOL_SEED, families=[family],
                                         levels=[level], unique=True)
        items += [item for item in drawn if max(map(int, re.split(r"[*+]", item.canonical))) >= 10 ** (level - 1)][
            :count]
    return [ToolProblem(id=f"hard/{item.id}", source="hard", kind="arithmetic", question=item.question,
                        answer=item.answer, reference=item.calls[0]) for item in items]


def _from_record(source: str, record: dict) -> ToolProblem:
    if source == "svamp":
        return ToolProblem(id=f"svamp/{record['id']}", source=source, kind="arithmetic",
                           question=record["question"], answer=record["final_answer"], reference=record["equation"])
    if source == "gsm8k":
        return ToolProblem(id=f"gsm8k/{record['id']}", source=source, kind="arithmetic",
                           question=record["question"], answer=record["final_answer"],
                           reference=record["answer"].rsplit("####", 1)[0].strip())
    tests = tuple(record["test_list"])
    question = f"{record['text']} Your code should pass these tests:\n" + "\n".join(tests)
    return ToolProblem(id=f"mbpp/{record['id']}", source=source, kind="code", question=question, answer="",
                       tests=tests, test_setup=record["test_setup_code"], reference=record["code"])


def load_problems(sources: Sequence[str] = SOURCES, *, heldout: bool = True, limit: int | None = None,
                  seed: int = 1234, data_dir: str | os.PathLike | None = None) -> list[ToolProblem]:
    """Problems of ``sources`` from the held-out side (else the train side), ``limit`` per source
    drawn with ``seed`` (None: all). ``easy`` and ``hard`` need no data; the others read ``data_dir`` (None:
    FORGE_DATA_DIR)."""
    unknown = [source for source in sources if source not in SOURCES]
    if unknown:
        raise ValueError(f"unknown tool-use sources {unknown}; known: {', '.join(SOURCES)}")
    problems: list[ToolProblem] = []
    for source in sources:
        if source == "easy":
            train, held = splits.partition(EASY_DATASET, easy_problems(), key=lambda problem: problem.question)
            items = held if heldout else train
        elif source == "hard":
            items = hard_problems(heldout)
        else:
            side = splits.heldout_items if heldout else splits.train_items
            items = [_from_record(source, record) for record in side(source, data_dir)]
        problems.extend(select_docs(items, limit, seed))
    return problems


def rotation_subset(problems: Sequence[ToolProblem], iteration: int, size: int, seed: int = 1234) -> list[ToolProblem]:
    """The ``iteration``-th block of ``size`` problems of one fixed shuffle (wrapping around), so
    consecutive iterations see different problems until the pool is used up."""
    if size < 1 or iteration < 0:
        raise ValueError(f"rotation_subset needs size >= 1 and iteration >= 0, got size={size}, "
                         f"iteration={iteration}")
    if not problems:
        raise ValueError("rotation_subset needs at least one problem")
    order = list(range(len(problems)))
    random.Random(seed).shuffle(order)
    start = iteration * size
    return [problems[order[(start + offset) % len(order)]] for offset in range(min(size, len(order)))]


# ---------------------------------------------------------------- reference transcripts

GSM8K_ANNOTATION = re.compile(r"<<([^=<>]*)=([^<>]*)>>")


def demonstrations(problems: Sequence[ToolProblem], limits: SandboxLimits = SandboxLimits()) -> dict[str, str]:
    """A worked transcript per problem id, with real tool outputs: what a model should write after
    the question (few-shot examples, and training text for tool use).

    easy/hard/SVAMP: one calculator call on the reference expression; GSM8K: its ``<<a*b=c>>``
    calculator annotations become calls (an annotation the calculator refuses stays plain text);
    MBPP: the reference code run with the tests as a python call, then the code as the answer.
    """
    transcripts: dict[str, str] = {}
    code = [problem for problem in problems if problem.kind == "code"]
    programs = [python_program(problem.reference, problem.tests, problem.test_setup) for problem in code]
    for problem, outcome in zip(code, run_programs(programs, limits) if programs else []):
        code_block = f"\n{problem.reference}\n"
        transcripts[problem.id] = call_text("python", code_block, python_output(outcome, limits.timeout_s)) + \
            answer_text(code_block)
    for problem in problems:
        if problem.source in ("easy", "hard", "svamp"):
            transcripts[problem.id] = call_text("calc", problem.reference, calculate(problem.reference)) + \
                answer_text(problem.answer)
        elif problem.source == "gsm8k":
            steps = GSM8K_ANNOTATION.sub(_gsm8k_call, problem.reference)
            transcripts[problem.id] = f"{steps}\n{answer_text(problem.answer)}"
    return transcripts


def _gsm8k_call(match: re.Match) -> str:
    try:
        return call_text("calc", match.group(1), calculate(match.group(1)))
    except CalculatorError:
        return ""
