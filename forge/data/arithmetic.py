"""Safe arithmetic: the value of an expression over a whitelist of AST nodes, never ``eval``.

Numbers, + - * / // % **, unary signs and parentheses; thousands separators (``1,000``) are accepted.
Names, calls, attributes, comparisons and every other construct are refused, and so are results or
exponents large enough to hang the process. Used to verify data (GSM8K's calculator annotations, SVAMP's
equations) and as the tool-use benchmark's calculator.
"""
from __future__ import annotations

import ast
import math
import operator
import re
from typing import Callable

MAX_EXPRESSION_CHARS = 200  # longer input is refused before parsing
MAX_MAGNITUDE = 1e15  # any intermediate value beyond this is refused (no giant integers)
MAX_EXPONENT = 64  # ** with a larger exponent is refused (9**9**9 would run for ever)

OPERATORS: dict[type, tuple[Callable[[float, float], float], str]] = {
    ast.Add: (operator.add, "+"), ast.Sub: (operator.sub, "-"), ast.Mult: (operator.mul, "*"),
    ast.Div: (operator.truediv, "/"), ast.FloorDiv: (operator.floordiv, "//"), ast.Mod: (operator.mod, "%"),
    ast.Pow: (operator.pow, "**"),
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


class CalculatorError(ValueError):
    """An expression could not be evaluated (division by zero, a value too large)."""


class NotArithmeticError(CalculatorError):
    """The input is not an arithmetic expression this evaluator accepts."""


def _checked(value: int | float) -> int | float:
    if isinstance(value, complex):
        raise CalculatorError("the result is not a real number")
    if (isinstance(value, float) and not math.isfinite(value)) or abs(value) > MAX_MAGNITUDE:
        raise CalculatorError(f"a value exceeds {MAX_MAGNITUDE:g}")
    return value


def apply_operator(op: ast.operator, left: int | float, right: int | float) -> int | float:
    """``left op right`` for a whitelisted binary operator, with the size limits."""
    if type(op) not in OPERATORS:
        raise NotArithmeticError(f"{type(op).__name__} is not an arithmetic operator")
    if isinstance(op, ast.Pow) and abs(right) > MAX_EXPONENT:
        raise CalculatorError(f"exponent {right} is larger than {MAX_EXPONENT}")
    try:
        return _checked(OPERATORS[type(op)][0](left, right))
    except ZeroDivisionError as err:
        raise CalculatorError("division by zero") from err
    except OverflowError as err:
        raise CalculatorError(f"a value exceeds {MAX_MAGNITUDE:g}") from err


def evaluate_node(node: ast.AST) -> int | float:
    """The value of a parsed expression (``ast.Expression`` or its body)."""
    if isinstance(node, ast.Expression):
        return evaluate_node(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _checked(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _checked(_UNARY[type(node.op)](evaluate_node(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
        return apply_operator(node.op, evaluate_node(node.left), evaluate_node(node.right))
    raise NotArithmeticError(f"{type(node).__name__} is not arithmetic: only numbers, + - * / // % ** "
                             "and parentheses are allowed")


def parse(expression: str) -> ast.Expression:
    """``expression`` parsed for evaluation (thousands separators removed); refuses non-expressions."""
    text = _THOUSANDS.sub("", expression.strip())
    if not text:
        raise NotArithmeticError("empty expression")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise NotArithmeticError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        return ast.parse(text, mode="eval")
    except SyntaxError as err:
        raise NotArithmeticError(f"not an arithmetic expression: {err.msg}") from err


def evaluate(expression: str) -> int | float:
    """The value of an arithmetic expression; NotArithmeticError or CalculatorError otherwise."""
    return evaluate_node(parse(expression))


def format_number(value: int | float) -> str:
    """Integers (and integral floats) without a decimal point; other floats with up to 6 decimals."""
    if isinstance(value, int) or value.is_integer():
        return str(int(value))
    return f"{value:.6f}".rstrip("0").rstrip(".")


def calculate(expression: str) -> str:
    """The value of an arithmetic expression as text (the calculator tool)."""
    return format_number(evaluate(expression))
