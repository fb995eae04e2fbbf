"""Reasoning traces built offline from data with known solutions (train side of the local data only).

Each strategy comes from a rule applied to what the data really contains; nothing is invented:

- ``<step>``: a line of a GSM8K worked solution (calculator annotations removed), one operation of a
  SVAMP equation evaluated innermost first, one StrategyQA decomposition question, or the function
  signature an MBPP solution defines.
- ``<doubt>`` + ``<correct>``: the last GSM8K calculator annotation ``<<a*b=c>>`` re-computed by our own
  evaluator; ``<correct>`` states the verified result. Every annotation is verified; a problem with one
  that does not hold is rejected (counted in ``rejected``).
- ``<orthogonal>``: a SVAMP result confirmed by the inverse operation (c = a - b checked as c + b = a).
- ``<falsify>``: each MBPP test assertion: the code is wrong if it fails.
- ``<mece>``: the complete set of answers the question allows: ARC's choices, StrategyQA's yes / no.
- ``<bayesian>``: a measured prior: uniform over ARC's choices; StrategyQA's yes-rate in its train items.
- ``<expert>``: the StrategyQA facts the answer rests on.
- ``<multidomain>``: a math word problem whose quantities span two or more unit domains (money, time,
  distance, weight, volume, percent), found by keywords in the question.
- ``<uncertain>``: the answer is not derivable from the trace: ARC gives no explanation, and
  StrategyQA items without facts.

Every example is labelled ``offline:<rule>`` in ``generator``.
"""
from __future__ import annotations

import ast
import functools
import operator
import random
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

from forge.data.readers import number_to_str
from forge.data.arithmetic import OPERATORS, CalculatorError, apply_operator, evaluate, evaluate_node, parse
from forge.data.splits import DEFAULT_HELDOUT_FRACTION, train_items
from forge.quietstar.data import ReasoningExample, make_example

Record = dict
Moves = list[tuple[str, str]]

OFFLINE_SOURCES: tuple[str, ...] = ("gsm8k", "svamp", "mbpp", "arc_easy", "arc_challenge", "strategyqa")

# The inverse that recovers the left operand a from c = a op b.
_INVERSE = {ast.Add: ("-", operator.sub), ast.Sub: ("+", operator.add),
            ast.Mult: ("/", operator.truediv), ast.Div: ("*", operator.mul)}
_ANNOTATION = re.compile(r"<<([^<>=]*)=([^<>]*)>>")
_UNIT_DOMAINS: dict[str, re.Pattern] = {
    "money": re.compile(r"\$|\b(dollars?|cents?|price|cost|costs|paid|pays?|earns?|salary)\b", re.I),
    "time": re.compile(r"\b(seconds?|minutes?|hours?|days?|weeks?|months?|years?)\b", re.I),
    "distance": re.compile(r"\b(miles?|meters?|kilometers?|km|feet|foot|inches|inch|yards?)\b", re.I),
    "weight": re.compile(r"\b(pounds?|kilograms?|kg|grams?|ounces?|tons?)\b", re.I),
    "volume": re.compile(r"\b(liters?|litres?|gallons?|cups?|milliliters?|ml)\b", re.I),
    "percent": re.compile(r"%|\bpercent\b", re.I),
}


def show(value: float) -> str:
    """A computed number as text, to 10 significant digits (0.1 + 0.2 shows as 0.3)."""
    return number_to_str(float(f"{value:.10g}"))


def close(a: float, b: float) -> bool:
    """Equal up to float rounding (relative 1e-6)."""
    return abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))


def unit_domains(text: str) -> list[str]:
    """The unit domains whose keywords occur in ``text``, in a fixed order."""
    return [name for name, pattern in _UNIT_DOMAINS.items() if pattern.search(text)]


def _multidomain_move(question: str) -> Moves:
    domains = unit_domains(question)
    if len(domains) < 2:
        return []
    return [("<multidomain>", f"The problem combines {', '.join(domains[:-1])} and {domains[-1]} quantities.")]


class Rejected(ValueError):
    """A record that cannot give an honest trace; ``kind`` names the reason for counting."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


# ---------------------------------------------------------------- one rule per dataset

def gsm8k_example(record: Record) -> ReasoningExample:
    """GSM8K worked solution -> <step> lines, <doubt>/<correct> re-check, <multidomain>."""
    solution = record["answer"].rsplit("####", 1)[0]
    annotations = _ANNOTATION.findall(solution)
    for expression, claimed in annotations:
        try:
            value, stated = evaluate(expression), evaluate(claimed)
        except CalculatorError as err:
            raise Rejected("unverifiable calculator annotation", str(err)) from err
        if not close(value, stated):
            raise Rejected("calculator annotation does not hold", f"{expression}={claimed}")
    lines = [" ".join(_ANNOTATION.sub("", line).split()) for line in solution.splitlines()]
    moves: Moves = [("<step>", line) for line in lines if line]
    if not moves:
        raise Rejected("empty solution", record["id"])
    moves += _multidomain_move(record["question"])
    if annotations:
        expression, claimed = annotations[-1]
        moves += [("<doubt>", f"Re-check the last calculation {expression.strip()}."),
                  ("<correct>", f"Recomputed: {expression.strip()} = {show(evaluate(expression))}, "
                                f"as stated.")]
    return make_example(id=f"gsm8k/{record['id']}", question=record["question"], moves=moves,
                        answer=record["final_answer"], source="gsm8k", generator="offline:gsm8k-solution")


def _equation_steps(node: ast.AST, moves: Moves, expression: str) -> float:
    """Evaluate ``node`` innermost first, one <step> per operation."""
    if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
        left = _equation_steps(node.left, moves, expression)
        right = _equation_steps(node.right, moves, expression)
        value = apply_operator(node.op, left, right)
        moves.append(("<step>", f"{show(left)} {OPERATORS[type(node.op)][1]} {show(right)} = {show(value)}"))
        return value
    return evaluate_node(node)


def svamp_example(record: Record) -> ReasoningExample:
    """SVAMP equation -> one <step> per operation, <orthogonal> inverse check, <multidomain>."""
    equation = record["equation"]
    try:
        tree = parse(equation).body
        moves: Moves = []
        value = _equation_steps(tree, moves, equation)
    except CalculatorError as err:
        raise Rejected("unusable equation", f"{equation!r}: {err}") from err
    if not moves:
        raise Rejected("equation without an operation", equation)
    if not close(value, float(record["final_answer"])):
        raise Rejected("equation disagrees with the answer key",
                       f"{equation!r} gives {value}, the key {record['final_answer']}")
    if type(tree.op) in _INVERSE:
        left, right = evaluate(ast.unparse(tree.left)), evaluate(ast.unparse(tree.right))
        symbol, inverse = _INVERSE[type(tree.op)]
        if not (symbol == "/" and right == 0) and close(inverse(value, right), left):
            moves.append(("<orthogonal>", f"Check by the inverse operation: {show(value)} {symbol} {show(right)} "
                                          f"= {show(left)}, the starting quantity."))
    moves += _multidomain_move(record["question"])
    return make_example(id=f"svamp/{record['id']}", question=record["question"], moves=moves,
                        answer=record["final_answer"], source="svamp", generator="offline:svamp-equation")


def mbpp_example(record: Record) -> ReasoningExample:
    """MBPP solution -> <step> with the tested function's signature, one <falsify> per test."""
    try:
        with warnings.catch_warnings():  # invalid escapes in the dataset's strings: not our concern here
            warnings.simplefilter("ignore")
            module = ast.parse(record["code"].replace("\t", "    "))
    except SyntaxError as err:
        raise Rejected("code does not parse as Python 3", f"task {record['task_id']}: {err.msg}") from err
    tests = " ".join(record["test_list"])
    functions = [node for node in module.body if isinstance(node, ast.FunctionDef) and f"{node.name}(" in tests]
    if not functions or not record["test_list"]:
        raise Rejected("no tested function", f"task {record['task_id']}")
    function = functions[0]
    moves: Moves = [("<step>", f"Define {function.name}({ast.unparse(function.args)}) and return the result.")]
    moves += [("<falsify>", f"The code is wrong if this fails: {' '.join(test.split())}")
              for test in record["test_list"]]
    return make_example(id=f"mbpp/{record['id']}", question=record["text"], moves=moves, answer=record["code"],
                        source="mbpp", generator="offline:mbpp-code-tests")


def arc_example(record: Record, source: str) -> ReasoningExample:
    """ARC -> <mece> over the choices, <bayesian> uniform prior, <uncertain>: no explanation is given."""
    letters = "ABCDEFGH"
    choices = record["choices"]
    options = "; ".join(f"({letters[i]}) {' '.join(str(choice).split())}" for i, choice in enumerate(choices))
    moves: Moves = [
        ("<mece>", f"Exactly one of these options is right: {options}"),
        ("<bayesian>", f"Before any evidence each of the {len(choices)} options has probability "
                       f"1/{len(choices)} = {1 / len(choices):.2f}."),
        ("<uncertain>", "The question does not state the facts that decide between them; the answer rests on "
                        "the answer key."),
    ]
    answer = f"({letters[record['label']]}) {choices[record['label']]}"
    return make_example(id=f"{source}/{record['id']}", question=record["question"], moves=moves, answer=answer,
                        source=source, generator="offline:arc-answer-key")


def strategyqa_example(record: Record, yes_rate: float, n_train: int) -> ReasoningExample:
    """StrategyQA -> <mece> yes/no, <step> per decomposition question, <expert> per fact, <bayesian>
    prior from the train yes-rate; <uncertain> when no facts are given."""
    answer = "yes" if record["answer"] else "no"
    moves: Moves = [("<mece>", "The answer is exactly one of yes or no.")]
    moves += [("<step>", " ".join(question.split())) for question in record["decomposition"]]
    moves += [("<expert>", " ".join(fact.split())) for fact in record["facts"]]
    moves.append(("<bayesian>", f"Prior: {yes_rate:.0%} of the {n_train} training questions are answered yes."))
    if not record["facts"]:
        moves.append(("<uncertain>", "No facts are given, so the answer cannot be derived here."))
    return make_example(id=f"strategyqa/{record['id']}", question=record["question"], moves=moves, answer=answer,
                        source="strategyqa", generator="offline:strategyqa-facts")


# ---------------------------------------------------------------- the generator

@dataclass
class OfflineConfig:
    """Which local datasets to build traces from, and in what order."""

    data_dir: str | None = None  # reference data folder; None: the FORGE_DATA_DIR variable
    sources: tuple[str, ...] = OFFLINE_SOURCES  # datasets used, interleaved round-robin
    seed: int = 0  # shuffles each dataset's items
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION  # must equal the evaluation's, so no held-out item leaks

    def __post_init__(self) -> None:
        self.sources = tuple(self.sources)
        unknown = [name for name in self.sources if name not in OFFLINE_SOURCES]
        if unknown or not self.sources:
            raise ValueError(f"offline sources {unknown or '()'} are not supported; choose from "
                             f"{', '.join(OFFLINE_SOURCES)}")


class OfflineReasoningGenerator:
    """Real traces from the train side of GSM8K, SVAMP, MBPP, ARC and StrategyQA (see module doc)."""

    name = "offline"

    def __init__(self, config: OfflineConfig | None = None):
        self.config = config or OfflineConfig()
        self.rejected: Counter[str] = Counter()  # "<source>: <reason kind>" -> records skipped

    def _examples(self, source: str) -> Iterator[ReasoningExample]:
        items = train_items(source, self.config.data_dir, heldout_fraction=self.config.heldout_fraction)
        items = list(items)
        random.Random(f"{self.config.seed}/{source}").shuffle(items)
        if source == "strategyqa":
            yes_rate = sum(bool(item["answer"]) for item in items) / max(len(items), 1)
            build = functools.partial(strategyqa_example, yes_rate=yes_rate, n_train=len(items))
        elif source.startswith("arc_"):
            build = functools.partial(arc_example, source=source)
        else:
            build = {"gsm8k": gsm8k_example, "svamp": svamp_example, "mbpp": mbpp_example}[source]
        for item in items:
            try:
                yield build(item)
            except Rejected as err:
                self.rejected[f"{source}: {err.kind}"] += 1

    def generate(self, n: int) -> Iterator[ReasoningExample]:
        """Up to ``n`` examples, one from each source in turn; stops early when every source is used up."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        streams = [self._examples(source) for source in self.config.sources]
        produced = 0
        while streams and produced < n:
            for stream in list(streams):
                if produced >= n:
                    return
                example = next(stream, None)
                if example is None:
                    streams.remove(stream)
                    continue
                produced += 1
                yield example
