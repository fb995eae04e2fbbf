"""The call syntax of tool use, as a model writes it and as training transcripts show it.

A model turn is plain text that may open one tool call, ``<calc>EXPR`` or ``<python>CODE``, closed by
``</calc>`` / ``</python>``, or give the final answer ``<answer>TEXT</answer>``; the tool's output follows as
``<result>OUTPUT</result>``. The tool-use benchmark (``benchmarks.tooluse``) runs these calls; the task world
(``forge.data.taskworld``) and the benchmark's demonstrations write transcripts in it.
"""
from __future__ import annotations

from typing import Literal

ToolName = Literal["calc", "python"]
TOOLS: tuple[ToolName, ...] = ("calc", "python")
OPEN_TAGS = {"calc": "<calc>", "python": "<python>"}
CLOSE_TAGS = {"calc": "</calc>", "python": "</python>"}
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
RESULT_OPEN, RESULT_CLOSE = "<result>", "</result>"
NEXT_QUESTION = "\nQuestion:"
# Generation of a turn stops at any of these: a call closes, the answer closes, or the model starts
# another item (as it would after a few-shot example).
STOP_SEQUENCES = (*CLOSE_TAGS.values(), ANSWER_CLOSE, NEXT_QUESTION)
ALL_TAGS = (*OPEN_TAGS.values(), *CLOSE_TAGS.values(), ANSWER_OPEN, ANSWER_CLOSE, RESULT_OPEN, RESULT_CLOSE)


def call_text(tool: str, argument: str, result: str) -> str:
    """One call and the tool's output, as a transcript shows them."""
    return f"{OPEN_TAGS[tool]}{argument}{CLOSE_TAGS[tool]}\n{RESULT_OPEN}{result}{RESULT_CLOSE}\n"


def answer_text(text: str) -> str:
    """The final answer element."""
    return f"{ANSWER_OPEN}{text}{ANSWER_CLOSE}"
