"""The tools of the tool-use benchmark and the call syntax the model writes.

The call syntax is ``forge.data.tool_syntax`` (generation stops where a call closes); the evaluator runs the
call and appends ``<result>OUTPUT</result>`` as the tool's turn.

- calculator: ``forge.data.arithmetic.calculate``: arithmetic only, over a whitelist of AST nodes;
  never ``eval``;
- python: the code runs in ``benchmarks.sandbox`` (no network, no processes, time and memory limits),
  followed by the problem's tests when it has some; printed output and errors come back.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

from benchmarks.sandbox import ExecutionResult, SandboxLimits, run_programs
from forge.data.arithmetic import CalculatorError, NotArithmeticError, calculate  # noqa: F401  (the calc tool)

from forge.data.tool_syntax import (ALL_TAGS, ANSWER_CLOSE, ANSWER_OPEN, CLOSE_TAGS, NEXT_QUESTION,  # noqa: F401
                                     OPEN_TAGS, RESULT_CLOSE, RESULT_OPEN, STOP_SEQUENCES, TOOLS, ToolName)

TESTS_PASSED = "All tests passed."
MAX_RESULT_CHARS = 300  # a tool's output is cut to its last characters so contexts stay short

# ---------------------------------------------------------------- python

def python_program(code: str, tests: Sequence[str] = (), setup: str = "") -> str:
    """The sandboxed program of a python call: the code, then the problem's tests when it has some.

    The sandbox reports only stderr, so printed output is sent there too.
    """
    lines = ["import sys", "sys.stdout = sys.stderr", code]
    if tests:
        lines += [setup, *tests, f"print({TESTS_PASSED!r})"]
    return "\n".join(lines) + "\n"


def python_output(result: ExecutionResult, timeout_s: float) -> str:
    """What the model sees of a python run: its output, the error's last lines, or the timeout."""
    if result.status == "timeout":
        return f"error: timed out after {timeout_s:g} s"
    text = result.stderr_tail.strip()
    if result.status == "failed":
        text = "error: " + "\n".join(text.splitlines()[-3:])
    return _tail(text or "(no output)")


def _tail(text: str) -> str:
    return text if len(text) <= MAX_RESULT_CHARS else "..." + text[-MAX_RESULT_CHARS:]


# ---------------------------------------------------------------- calls

@dataclass
class ToolCall:
    """One tool call found in a model turn and what running it gave."""

    tool: ToolName  # which tool the model called
    argument: str  # the expression or code between the tags
    well_formed: bool = False  # closed, and the tool could parse its argument
    error: str | None = None  # why the call failed (refused, malformed, raised, timed out); None: it worked
    result: str = ""  # the text appended as the tool's turn

    def to_dict(self) -> dict:
        return {"tool": self.tool, "argument": self.argument, "well_formed": self.well_formed,
                "error": self.error, "result": self.result}


def find_call(text: str) -> tuple[str, ToolName | Literal["answer"] | None, str]:
    """Split a model turn into (text before the first tag, what the tag opens, text after it)."""
    positions = {name: text.find(tag) for name, tag in (*OPEN_TAGS.items(), ("answer", ANSWER_OPEN))}
    found = {name: pos for name, pos in positions.items() if pos >= 0}
    if not found:
        return text, None, ""
    name = min(found, key=found.get)
    tag = ANSWER_OPEN if name == "answer" else OPEN_TAGS[name]
    start = found[name]
    return text[:start], name, text[start + len(tag):]


def run_calls(calls: Sequence[tuple[ToolCall, bool, Sequence[str], str]], limits: SandboxLimits) -> None:
    """Run each ``(call, closed, tests, setup)`` and fill in the call's outcome; python runs in parallel.

    ``closed``: generation stopped at the call's closing tag (else the turn ran out of tokens or
    ended inside the call). ``tests``/``setup``: the problem's tests, run after python code.
    """
    programs, waiting = [], []
    for call, closed, tests, setup in calls:
        stray = [tag for tag in ALL_TAGS if tag in call.argument]
        if not closed or stray:
            call.error = (f"malformed: {stray[0]} inside the call" if stray
                          else f"malformed: no {CLOSE_TAGS[call.tool]}")
            call.result = f"error: {call.error}"
        elif call.tool == "calc":
            try:
                call.result = calculate(call.argument)
                call.well_formed = True
            except CalculatorError as err:
                # Arithmetic that failed (division by zero, overflow) was still a proper call.
                call.well_formed = not isinstance(err, NotArithmeticError)
                call.error = str(err)
                call.result = f"error: {err}"
        else:
            try:
                compile(call.argument, "<python call>", "exec")
            except (SyntaxError, ValueError) as err:
                call.error = f"syntax error: {getattr(err, 'msg', err)}"
                call.result = f"error: {call.error}"
                continue
            call.well_formed = True
            programs.append(python_program(call.argument, tests, setup))
            waiting.append(call)
    for call, outcome in zip(waiting, run_programs(programs, limits) if programs else []):
        call.result = python_output(outcome, limits.timeout_s)
        if not outcome.passed:
            call.error = "timeout" if outcome.status == "timeout" else call.result.removeprefix("error: ")
