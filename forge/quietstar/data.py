"""Quiet-STaR reasoning data: the example record, the generator interface, the spec's validation,
and the dataset file (JSONL, one example a line, with a ``.meta.json`` sidecar).

A thinking block is ``[thinking]``, then one line per reasoning move starting with its strategy
token (``<step> 48/2 = 24``), then ``[/endthinking]``. Generators: ``forge.quietstar.offline``
(traces built from the solutions in the local data) and ``forge.quietstar.api`` (an
OpenAI-compatible service, under a hard cost cap).
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol, Sequence

from forge.artifacts import atomic_write_bytes, atomic_write_json, read_json
from forge.quietstar.tokens import STRATEGY_TOKENS, THINK_END, THINK_START, THINKING_TOKENS, strategies_in

DATASET_KIND = "agent-forge/quietstar-reasoning"
REASONING = "reasoning"
"""Phase 3's declared text output: its reasoning dataset file, whose traces Phase 4 heals on with the text when
``bitnet.reasoning_traces`` is set (so that healing does not erase the thinking Phase 3 baked)."""


@dataclass(frozen=True)
class ReasoningExample:
    """One question with a thinking block and its answer."""

    id: str  # unique within a dataset: "<source>/<record id>"
    question: str  # the problem as posed
    thinking: str  # "[thinking]\n<strategy> ...\n...\n[/endthinking]"
    answer: str  # the final answer (a number, a choice's text, yes/no, code)
    strategies: tuple[str, ...]  # strategy tokens used in ``thinking``, in STRATEGY_TOKENS order
    source: str  # dataset the question comes from, e.g. "gsm8k"
    generator: str  # how the thinking was made, e.g. "offline:gsm8k-solution" or "api:<model>"

    def text(self) -> str:
        """The training text: question, thinking block, answer."""
        return f"Question: {self.question}\n{self.thinking}\nAnswer: {self.answer}"

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["strategies"] = list(self.strategies)
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "ReasoningExample":
        fields = {name: record[name] for name in cls.__dataclass_fields__}
        fields["strategies"] = tuple(fields["strategies"])
        return cls(**fields)


class ReasoningGenerator(Protocol):
    """Anything that yields reasoning examples."""

    name: str  # label of the generator, recorded in the dataset metadata

    def generate(self, n: int) -> Iterator[ReasoningExample]:
        """Yield up to ``n`` examples (fewer when its source runs out)."""
        ...


def thinking_block(moves: Sequence[tuple[str, str]]) -> str:
    """``[thinking]``, one ``<strategy> text`` line per move, ``[/endthinking]``."""
    for strategy, text in moves:
        if strategy not in STRATEGY_TOKENS:
            raise ValueError(f"{strategy!r} is not a strategy token; use one of {', '.join(STRATEGY_TOKENS)}")
        if "\n" in text:
            raise ValueError(f"a thinking move is one line; got a newline in {text[:60]!r}")
    lines = [f"{strategy} {text}" for strategy, text in moves]
    return "\n".join([THINK_START, *lines, THINK_END])


def make_example(*, id: str, question: str, moves: Sequence[tuple[str, str]], answer: str, source: str,
                 generator: str) -> ReasoningExample:
    """A ReasoningExample whose ``strategies`` are read off its thinking block."""
    thinking = thinking_block(moves)
    return ReasoningExample(id=id, question=question, thinking=thinking, answer=answer,
                            strategies=tuple(strategies_in(thinking)), source=source, generator=generator)


def thinking_problem(thinking: str) -> str | None:
    """Why ``thinking`` is not a well-formed thinking block, or None when it is."""
    text = thinking.strip()
    if not text.startswith(THINK_START):
        return f"does not start with {THINK_START}"
    if not text.endswith(THINK_END):
        return f"does not end with {THINK_END}"
    if text.count(THINK_START) != 1 or text.count(THINK_END) != 1:
        return f"has {text.count(THINK_START)} {THINK_START} and {text.count(THINK_END)} {THINK_END} (need one each)"
    inner = text[len(THINK_START):-len(THINK_END)]
    if not strategies_in(inner):
        return "has no strategy token inside"
    return None


# ---------------------------------------------------------------- validation

@dataclass(frozen=True)
class Check:
    """One validation check and its outcome."""

    name: str  # what was checked
    passed: bool  # whether the data meets it
    detail: str  # the measured value, or why it failed


@dataclass(frozen=True)
class ValidationReport:
    """The spec's data checks over a set of examples."""

    checks: tuple[Check, ...]  # every check, passed or not
    n_examples: int  # how many examples were checked
    strategy_counts: dict[str, int] = field(default_factory=dict)  # examples using each strategy

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def failures(self) -> list[Check]:
        return [check for check in self.checks if not check.passed]

    def raise_if_failed(self) -> None:
        if not self.passed:
            raise ValueError("reasoning data failed validation: " + "; ".join(
                f"{check.name}: {check.detail}" for check in self.failures()))


def validate_examples(examples: Iterable[ReasoningExample], min_examples: int,
                      strategies: Sequence[str] = STRATEGY_TOKENS) -> ValidationReport:
    """Check: at least ``min_examples`` examples, unique ids, each of ``strategies`` (default: all 10) used
    somewhere, and every example with a well-formed thinking block holding a strategy token, its ``strategies``
    field true. A source whose problems give some strategies nothing true to say (exact arithmetic has no prior
    and no unstated quantity) names the ones it uses, e.g. ``forge.quietstar.taskworld.STRATEGIES``."""
    examples = list(examples)
    counts = Counter(strategy for example in examples for strategy in strategies_in(example.thinking))
    checks = [Check("enough_examples", len(examples) >= min_examples,
                    f"{len(examples)} examples, need at least {min_examples}")]
    duplicates = [key for key, count in Counter(example.id for example in examples).items() if count > 1]
    checks.append(Check("unique_ids", not duplicates,
                        f"repeated ids: {duplicates[:5]}" if duplicates else "all ids distinct"))
    unknown = [strategy for strategy in strategies if strategy not in STRATEGY_TOKENS]
    if unknown or not strategies:
        raise ValueError(f"strategies {list(strategies)}: choose some of {', '.join(STRATEGY_TOKENS)}")
    missing = [strategy for strategy in strategies if not counts[strategy]]
    checks.append(Check("all_strategies", not missing,
                        f"never used: {', '.join(missing)}" if missing else f"all {len(strategies)} strategies used"))
    malformed = [(example.id, problem) for example in examples
                 if (problem := thinking_problem(example.thinking)) is not None]
    checks.append(Check("well_formed_thinking", not malformed,
                        f"{len(malformed)} malformed, e.g. " + "; ".join(f"{key} {why}" for key, why in malformed[:3])
                        if malformed else "every thinking block is well formed"))
    mislabelled = [example.id for example in examples
                   if tuple(example.strategies) != tuple(strategies_in(example.thinking))]
    checks.append(Check("strategies_match_thinking", not mislabelled,
                        f"{len(mislabelled)} examples list strategies their thinking does not use, e.g. "
                        f"{mislabelled[:3]}" if mislabelled else "strategy lists match the thinking"))
    return ValidationReport(tuple(checks), len(examples), {s: counts[s] for s in STRATEGY_TOKENS})


# ---------------------------------------------------------------- dataset files

def metadata_path(path: Path) -> Path:
    """The sidecar of a dataset file: ``reasoning.jsonl`` -> ``reasoning.jsonl.meta.json``."""
    path = Path(path)
    return path.with_name(path.name + ".meta.json")


def dataset_metadata(examples: Sequence[ReasoningExample], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the spec's validation reads (``total_examples``, ``strategies``, ``special_tokens``) plus counts."""
    return {
        "kind": DATASET_KIND,
        "total_examples": len(examples),
        "strategies": list(STRATEGY_TOKENS),
        "special_tokens": list(THINKING_TOKENS),
        "generators": dict(Counter(example.generator for example in examples)),
        "sources": dict(Counter(example.source for example in examples)),
        "strategy_counts": dict(Counter(s for example in examples for s in example.strategies)),
        **dict(extra or {}),
    }


def encode_line(example: ReasoningExample) -> bytes:
    return (json.dumps(example.to_dict(), ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")


def write_dataset(examples: Iterable[ReasoningExample], path: Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``examples`` as JSONL and its metadata sidecar, each atomically (the sidecar last)."""
    path = Path(path)
    examples = list(examples)
    atomic_write_bytes(path, b"".join(encode_line(example) for example in examples))
    atomic_write_json(metadata_path(path), dataset_metadata(examples, extra))
    return path


def read_examples(path: Path) -> list[ReasoningExample]:
    """The examples of a JSONL dataset file (no metadata check)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reasoning dataset {path} not found: generate it first "
                                "(forge.quietstar.offline or forge.quietstar.api)")
    examples = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                examples.append(ReasoningExample.from_dict(json.loads(line)))
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{path} line {number} is not a reasoning example ({err}); "
                                 "regenerate the file") from err
    return examples


def read_dataset(path: Path) -> tuple[list[ReasoningExample], dict[str, Any]]:
    """``(examples, metadata)`` of a dataset file; refuses a file whose sidecar is missing or disagrees."""
    path = Path(path)
    examples = read_examples(path)
    meta_file = metadata_path(path)
    if not meta_file.is_file():
        raise FileNotFoundError(f"{meta_file} is missing: {path} was never finished; regenerate it")
    metadata = read_json(meta_file)
    if metadata.get("total_examples") != len(examples):
        raise ValueError(f"{path} holds {len(examples)} examples but {meta_file} says "
                         f"{metadata.get('total_examples')}: the file was changed or its writer stopped half-way; "
                         "resume or regenerate it")
    return examples, metadata


def append_line(path: Path, data: bytes) -> None:
    """Append one line and fsync it; a crash mid-write leaves only a torn last line (see drop_torn_tail)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def drop_torn_tail(path: Path) -> None:
    """Cut a last line that lacks its newline (a write the process did not finish)."""
    path = Path(path)
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)
