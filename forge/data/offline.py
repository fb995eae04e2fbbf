"""Offline text sources for a machine with no data files and no hub access.

Each generator is deterministic for (n, seed) and is labelled ``offline:<name>`` wherever its texts
are used, so generated or borrowed text is never mistaken for the dataset it stands in for:

- ``arithmetic_word_problems`` (math): generated multi-step word problems with worked solutions in
  GSM8K's layout ("Question: ...\\nAnswer: <steps>\\n#### N"); every step is an equation that holds.
- ``synthetic_qa`` (qa): generated short questions with computed answers (number comparison,
  calendar arithmetic, letter counting).
- ``python_stdlib_code`` (code): functions, with their docstrings, from the running interpreter's
  standard-library source files.
- ``python_stdlib_docstrings`` (language): the English prose of standard-library docstrings.
- ``taskworld`` (math): the train side of ``forge.data.taskworld``'s easy families and levels (generated, not a
  stand-in); ``taskworld_direct``: the same problems with direct answers only.
There is no honest offline stand-in for commonsense sets (PIQA, HellaSwag, StrategyQA).
"""
from __future__ import annotations

import ast
import random
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from forge.data import taskworld

NAMES = ("Ava", "Ben", "Carla", "Dev", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jamal", "Kira", "Liam",
         "Maya", "Noah", "Olu", "Priya", "Quinn", "Rosa", "Sam", "Tariq")
ITEMS = ("apple", "marble", "sticker", "pencil", "book", "cookie", "stamp", "shell", "card", "balloon")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")
WORDS = ("river", "mountain", "library", "pencil", "garden", "orange", "bicycle", "window", "planet",
         "teacher", "kitchen", "butterfly", "elephant", "calendar", "umbrella", "question")

# Standard-library modules whose source is not ordinary prose/code (obfuscated or joke modules).
_SKIP_STDLIB_FILES = {"this.py", "antigravity.py"}
_MAX_FUNCTION_CHARS = 3000
_MIN_DOCSTRING_CHARS = 200


def _word_problem(rng: random.Random) -> tuple[str, list[str], int]:
    """One problem: (question, solution steps as 'expression = value' lines, final answer)."""
    name, other = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    kind = rng.randrange(6)
    if kind == 0:
        have, packs, per_pack = rng.randint(2, 40), rng.randint(2, 9), rng.randint(2, 12)
        bought = packs * per_pack
        question = (f"{name} has {have} {item}s. {name} buys {packs} packs with {per_pack} {item}s in each "
                    f"pack. How many {item}s does {name} have now?")
        return question, [f"{packs} * {per_pack} = {bought}", f"{have} + {bought} = {have + bought}"], have + bought
    if kind == 1:
        wage, hours, days = rng.randint(8, 30), rng.randint(2, 8), rng.randint(2, 6)
        earned = wage * hours * days
        spent = rng.randint(1, earned - 1)
        question = (f"{name} earns ${wage} per hour and works {hours} hours a day for {days} days. "
                    f"Then {name} spends ${spent}. How many dollars does {name} have left?")
        return question, [f"{wage} * {hours} * {days} = {earned}", f"{earned} - {spent} = {earned - spent}"], \
            earned - spent
    if kind == 2:
        friends, each = rng.randint(2, 9), rng.randint(3, 15)
        eaten = rng.randint(1, each - 1)
        total = friends * each
        question = (f"{name} shares {total} {item}s equally among {friends} friends. Each friend gives away "
                    f"{eaten} of them. How many {item}s does each friend have left?")
        return question, [f"{total} / {friends} = {each}", f"{each} - {eaten} = {each - eaten}"], each - eaten
    if kind == 3:
        price, percent = rng.randint(1, 30) * 20, rng.choice((10, 15, 20, 25, 30, 40, 50, 75))
        discount = price * percent // 100
        question = (f"A {item} set costs ${price}. It is on sale for {percent}% off. "
                    "What is the sale price in dollars?")
        return question, [f"{price} * {percent} / 100 = {discount}", f"{price} - {discount} = {price - discount}"], \
            price - discount
    if kind == 4:
        speed1, hours1, speed2, hours2 = (rng.randint(20, 70), rng.randint(1, 5), rng.randint(20, 70),
                                          rng.randint(1, 5))
        leg1, leg2 = speed1 * hours1, speed2 * hours2
        question = (f"{name} drives at {speed1} miles per hour for {hours1} hours, then at {speed2} miles per "
                    f"hour for {hours2} hours. How many miles does {name} drive in total?")
        return question, [f"{speed1} * {hours1} = {leg1}", f"{speed2} * {hours2} = {leg2}",
                          f"{leg1} + {leg2} = {leg1 + leg2}"], leg1 + leg2
    age, gap, years = rng.randint(5, 40), rng.randint(1, 20), rng.randint(1, 15)
    older = age + gap
    later = age + years + older + years
    question = (f"{name} is {age} years old. {other} is {gap} years older than {name}. In {years} years, "
                "what will the sum of their ages be?")
    return question, [f"{age} + {gap} = {older}", f"{age} + {years} + {older} + {years} = {later}"], later


def arithmetic_word_problems(n: int, seed: int) -> list[str]:
    """``n`` generated word problems in GSM8K's text layout, with correct worked solutions."""
    rng = random.Random(f"arithmetic_word_problems/{seed}")
    texts = []
    for _ in range(n):
        question, steps, answer = _word_problem(rng)
        texts.append(f"Question: {question}\nAnswer: " + "\n".join(steps) + f"\n#### {answer}")
    return texts


def _qa_pair(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(5)
    if kind == 0:
        first, second = rng.sample(range(1, 1000), 2)
        return f"Which number is larger, {first} or {second}?", str(max(first, second))
    if kind == 1:
        day, offset = rng.randrange(7), rng.randint(1, 20)
        return (f"What day of the week is {offset} days after {WEEKDAYS[day]}?",
                WEEKDAYS[(day + offset) % 7])
    if kind == 2:
        month, offset = rng.randrange(12), rng.randint(1, 24)
        return f"Which month comes {offset} months after {MONTHS[month]}?", MONTHS[(month + offset) % 12]
    if kind == 3:
        word = rng.choice(WORDS)
        return f"How many letters are in the word \"{word}\"?", str(len(word))
    numbers = rng.sample(range(1, 100), rng.randint(3, 6))
    return (f"What is the smallest number in the list {', '.join(map(str, numbers))}?", str(min(numbers)))


def synthetic_qa(n: int, seed: int) -> list[str]:
    """``n`` generated "Question: ...\\nAnswer: ..." pairs whose answers are computed."""
    rng = random.Random(f"synthetic_qa/{seed}")
    return [f"Question: {question}\nAnswer: {answer}" for question, answer in
            (_qa_pair(rng) for _ in range(n))]


def stdlib_dir() -> Path:
    """The running interpreter's standard-library source folder."""
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_files(seed: int) -> list[Path]:
    files = sorted(path for path in stdlib_dir().glob("*.py") if path.name not in _SKIP_STDLIB_FILES)
    if not files:
        raise FileNotFoundError(f"no Python source files in {stdlib_dir()}: this interpreter ships its "
                                "standard library without sources, so the stdlib offline sources are unavailable")
    random.Random(f"stdlib/{seed}").shuffle(files)
    return files


FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef


def _functions(path: Path) -> tuple[list[FunctionNode], list[str]]:
    """The documented functions of a source file, in line order, and the file's lines."""
    source = path.read_text(encoding="utf-8")
    nodes = [node for node in ast.walk(ast.parse(source))
             if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and ast.get_docstring(node)]
    return sorted(nodes, key=lambda node: node.lineno), source.splitlines(keepends=True)


def _collect(n: int, seed: int, extract: Callable[[FunctionNode, list[str]], str | None]) -> list[str]:
    texts: list[str] = []
    for path in _stdlib_files(seed):
        nodes, lines = _functions(path)
        for node in nodes:
            text = extract(node, lines)
            if text:
                texts.append(text)
                if len(texts) == n:
                    return texts
    return texts


def python_stdlib_code(n: int, seed: int) -> list[str]:
    """Up to ``n`` documented functions (source with docstring) from the stdlib, seeded file order."""
    def extract(node, lines):
        # Remove the method's own indentation; lines inside strings that start further left stay as they are.
        indent = node.col_offset
        code = "".join(line[indent:] if not line[:indent].strip() else line
                       for line in lines[node.lineno - 1:node.end_lineno]).rstrip()
        return code if len(code) <= _MAX_FUNCTION_CHARS else None
    return _collect(n, seed, extract)


def python_stdlib_docstrings(n: int, seed: int) -> list[str]:
    """Up to ``n`` stdlib docstrings of at least 200 characters (English prose about the code)."""
    def extract(node, lines):
        doc = ast.get_docstring(node, clean=True)
        return doc if doc and len(doc) >= _MIN_DOCSTRING_CHARS else None
    return _collect(n, seed, extract)


@dataclass(frozen=True)
class OfflineGenerator:
    """A labelled offline text source."""

    name: str  # registry key; texts are labelled "offline:<name>"
    category: str  # curriculum category the texts serve
    generate: Callable[[int, int], list[str]]  # (n, seed) -> up to n texts, deterministic
    provenance: str  # where the text comes from, for run records


GENERATORS: dict[str, OfflineGenerator] = {
    generator.name: generator for generator in (
        OfflineGenerator("arithmetic_word_problems", "math", arithmetic_word_problems,
                         "generated by forge.data.offline (templated multi-step arithmetic)"),
        OfflineGenerator("synthetic_qa", "qa", synthetic_qa,
                         "generated by forge.data.offline (comparison, calendar and counting questions)"),
        OfflineGenerator("python_stdlib_code", "code", python_stdlib_code,
                         f"Python {sys.version.split()[0]} standard-library source"),
        OfflineGenerator("python_stdlib_docstrings", "language", python_stdlib_docstrings,
                         f"Python {sys.version.split()[0]} standard-library docstrings"),
        OfflineGenerator("taskworld", "math", taskworld.curriculum_texts,
                         "generated by forge.data.taskworld (train side: arithmetic, comparison, word problems)"),
        OfflineGenerator("taskworld_direct", "math", taskworld.direct_curriculum_texts,
                         "generated by forge.data.taskworld (train side, direct answers only)"),
    )
}


def source_label(name: str) -> str:
    """The source name recorded for texts from offline generator ``name``."""
    return f"offline:{name}"


def generate_offline(name: str, n: int, seed: int) -> list[str]:
    """Texts from offline generator ``name``; raises ValueError for an unknown name."""
    if name not in GENERATORS:
        raise ValueError(f"unknown offline generator {name!r}; known: {', '.join(GENERATORS)}")
    if n < 0:
        raise ValueError(f"n={n} must be >= 0")
    return GENERATORS[name].generate(n, seed)
