"""The spec's success criteria: a measured value against the spec's threshold, in the spec's direction.

Every phase builds its criteria with :func:`criterion`, so a criterion is met or missed the same way
everywhere. The spec asserts them; a phase records each as ``{"value", "direction", "threshold",
"required", "met"}`` in its summary and the pipeline goes on, unless ``strict_criteria`` is set: then the
first missed criterion stops the run (exit code 3). docs/SPEC.md lists every criterion.
"""
from __future__ import annotations

import math
import operator
from typing import Any, Mapping, Sequence

COMPARISONS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


def is_met(value: float | None, direction: str, threshold: float) -> bool:
    """``value <direction> threshold``; a missing or non-finite value is never met."""
    if direction not in COMPARISONS:
        raise ValueError(f"unknown direction {direction!r}; valid: {', '.join(COMPARISONS)}")
    if value is None or not math.isfinite(value):
        return False
    return bool(COMPARISONS[direction](value, threshold))


def criterion(value: float | None, direction: str, threshold: float,
              interval: Sequence[float] | None = None, out_of_reach: str | None = None) -> dict[str, Any]:
    """One criterion's record, as phases keep it in their summaries; ``interval``: the value's 95% interval where
    it is measured on a sample of items (shown beside it; the verdict compares the value); ``out_of_reach``: why no
    value this configuration can produce meets the threshold (shown with the verdict, so a reader does not tune
    what cannot move it)."""
    record = {"value": value, "direction": direction, "threshold": threshold,
              "required": f"{direction} {threshold:g}", "met": is_met(value, direction, threshold)}
    if interval is not None:
        record["interval"] = [float(bound) for bound in interval]
    if out_of_reach is not None:
        record["out_of_reach"] = out_of_reach
    return record


def missed(criteria: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Names of the criteria not met, sorted (as the manifest's JSON keys are)."""
    return sorted(name for name, record in criteria.items() if not record["met"])


def verdict(record: Mapping[str, Any]) -> str:
    """``met``, ``missed``, ``missed (not measured)`` when there is no value (e.g. a data folder's task), or
    ``missed (out of reach here: why)``."""
    if record["met"]:
        return "met"
    if record["value"] is None:
        return "missed (not measured)"
    return f"missed (out of reach here: {record['out_of_reach']})" if record.get("out_of_reach") else "missed"


def describe(name: str, record: Mapping[str, Any]) -> str:
    """``name = value (required ...): met|missed`` for logs and error messages."""
    value = record["value"]
    shown = f"{value:.4g}" if isinstance(value, (int, float)) else str(value)
    if record.get("interval"):
        shown += " [{:.4g}, {:.4g}]".format(*record["interval"])
    return f"{name} = {shown} (required {record['required']}): {verdict(record)}"


def criteria_line(criteria: Mapping[str, Mapping[str, Any]]) -> str:
    """``spec criteria K of N met: name = value (required ...): met; ...``, a phase's line on the console, by name
    (the order of its manifest and the report)."""
    met = sum(bool(record["met"]) for record in criteria.values())
    return f"spec criteria {met} of {len(criteria)} met: " + "; ".join(
        describe(name, criteria[name]) for name in sorted(criteria))
