"""The one train / held-out partition of the local data, shared by pretraining and evaluation.

Most local sets exist only as evaluation splits (ARC test, PIQA valid, HellaSwag val, BoolQ val,
StrategyQA dev, HotpotQA dev, DROP dev, WikiText-2 valid+test) or as a single set (SVAMP, ASDiv).
Pretraining on them would contaminate evaluation, so each item is assigned to a side by a stable hash:
``sha1("<dataset>/<item key>")`` read as a number in [0, 1) is compared with ``heldout_fraction``
(default 0.5). The key is the text that would leak (``PARTITION_KEYS``): the passage for DROP and
BoolQ, whose passages carry many questions (DROP: 9536 questions on 579 passages), the question for
the other QA sets (so repeated questions stay on one side), the article id for WikiText. The
assignment depends only on the dataset name and the key, never on order, seed or the rest of the
list, so pretraining (``train_items``) and the benchmarks harness (``heldout_items``) agree on it
without sharing state. Sets with a real train split (GSM8K, MBPP) use
their own splits instead: train for pretraining, test held out.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from forge.data import readers

DEFAULT_HELDOUT_FRACTION = 0.5

Record = dict[str, Any]


@dataclass(frozen=True)
class SplitPlan:
    """How one dataset's local files divide into pretraining items and held-out evaluation items."""

    reader: Callable[..., list[Record]]  # a forge.data.readers function
    parts: tuple[dict[str, Any], ...] = ()  # reader kwargs, one call per part that is hash-partitioned
    train_part: dict[str, Any] | None = None  # reader kwargs of a real train split; None: hash partition
    heldout_part: dict[str, Any] = field(default_factory=dict)  # reader kwargs of the real eval split


def _field(name: str) -> Callable[[Record], str]:
    # Whitespace-normalised, so the same text from a differently formatted copy (e.g. the hub's)
    # gets the same key.
    return lambda item: " ".join(str(item[name]).split())


# What identifies an item for the partition; datasets not listed use the item's "id".
PARTITION_KEYS: dict[str, Callable[[Record], str]] = {
    "drop": _field("passage"),
    "boolq": _field("passage"),
    **{name: _field("question") for name in (
        "svamp", "asdiv", "arc_easy", "arc_challenge", "piqa", "hellaswag", "strategyqa", "hotpotqa")},
}

SPLIT_PLANS: dict[str, SplitPlan] = {
    "gsm8k": SplitPlan(readers.read_gsm8k, train_part={"split": "train"}, heldout_part={"split": "test"}),
    "mbpp": SplitPlan(readers.read_mbpp, train_part={"split": "train"}, heldout_part={"split": "test"}),
    "svamp": SplitPlan(readers.read_svamp, ({},)),
    "asdiv": SplitPlan(readers.read_asdiv, ({},)),
    "arc_easy": SplitPlan(readers.read_arc, ({"subset": "easy"},)),
    "arc_challenge": SplitPlan(readers.read_arc, ({"subset": "challenge"},)),
    "piqa": SplitPlan(readers.read_piqa, ({},)),
    "hellaswag": SplitPlan(readers.read_hellaswag, ({},)),
    "boolq": SplitPlan(readers.read_boolq, ({},)),
    "strategyqa": SplitPlan(readers.read_strategyqa, ({},)),
    "hotpotqa": SplitPlan(readers.read_hotpotqa, ({},)),
    "drop": SplitPlan(readers.read_drop, ({},)),
    # Article ids carry the split ("valid-3", "test-7"), so both files are partitioned together.
    "wikitext": SplitPlan(readers.read_wikitext, ({"split": "valid"}, {"split": "test"})),
}


def _check_fraction(heldout_fraction: float) -> None:
    if not 0.0 <= heldout_fraction <= 1.0:
        raise ValueError(f"heldout_fraction={heldout_fraction} must lie in [0, 1] (default 0.5)")


def heldout_score(dataset: str, key: str) -> float:
    """Stable number in [0, 1) for an item: the first 8 bytes of sha1("<dataset>/<key>")."""
    digest = hashlib.sha1(f"{dataset}/{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def partition(dataset: str, items: Iterable[Record], key: str | Callable[[Record], str] | None = None,
              heldout_fraction: float = DEFAULT_HELDOUT_FRACTION) -> tuple[list[Record], list[Record]]:
    """Split ``items`` into (train_items, heldout_items) by the stable hash of each item's key.

    ``key`` is a field name or a function of the item, for datasets without a split plan; the
    datasets of ``SPLIT_PLANS`` always use their fixed key (``PARTITION_KEYS``, else "id") so that
    there is only one partition of them. Input order is kept on both sides; items with equal keys
    land on the same side.
    """
    _check_fraction(heldout_fraction)
    if key is not None and dataset in SPLIT_PLANS:
        raise ValueError(f"the partition key of {dataset!r} is fixed (one partition shared by pretraining "
                         "and evaluation): call partition() without key=")
    if key is None:
        key = PARTITION_KEYS.get(dataset, "id")
    train: list[Record] = []
    heldout: list[Record] = []
    for index, item in enumerate(items):
        try:
            item_key = key(item) if callable(key) else item[key]
        except KeyError as err:
            raise ValueError(f"{dataset} item {index} has no {err} field to partition on: items must follow "
                             "the forge.data.readers schema (or pass key= for a dataset without a plan)") from err
        (heldout if heldout_score(dataset, str(item_key)) < heldout_fraction else train).append(item)
    return train, heldout


def _plan(dataset: str) -> SplitPlan:
    if dataset not in SPLIT_PLANS:
        raise ValueError(f"no split plan for dataset {dataset!r}; known: {', '.join(sorted(SPLIT_PLANS))}")
    return SPLIT_PLANS[dataset]


def _hashed_parts(dataset: str, plan: SplitPlan, data_dir: str | os.PathLike | None,
                  heldout_fraction: float) -> tuple[list[Record], list[Record]]:
    items: list[Record] = []
    for kwargs in plan.parts:
        items.extend(plan.reader(data_dir, **kwargs))
    return partition(dataset, items, heldout_fraction=heldout_fraction)


def train_items(dataset: str, data_dir: str | os.PathLike | None = None,
                heldout_fraction: float = DEFAULT_HELDOUT_FRACTION) -> list[Record]:
    """The items of ``dataset`` that pretraining may use (never any held-out item)."""
    plan = _plan(dataset)
    if plan.train_part is not None:
        return plan.reader(data_dir, **plan.train_part)
    return _hashed_parts(dataset, plan, data_dir, heldout_fraction)[0]


def heldout_items(dataset: str, data_dir: str | os.PathLike | None = None,
                  heldout_fraction: float = DEFAULT_HELDOUT_FRACTION) -> list[Record]:
    """The items of ``dataset`` kept out of pretraining, for evaluation and pipeline fitness."""
    plan = _plan(dataset)
    if plan.train_part is not None:
        return plan.reader(data_dir, **plan.heldout_part)
    return _hashed_parts(dataset, plan, data_dir, heldout_fraction)[1]

