"""Registry of the Cognate curriculum datasets and loading with an explicit source order.

Each dataset has a category, a hub location for online users (``datasets.load_dataset``), a local
copy (the *train* side of ``forge.data.splits``, so held-out evaluation items are never trained on),
an optional labelled offline stand-in, and a function that formats one record as training text.
``load_texts`` tries the sources in ``SourceConfig.order`` and reports the one actually used; a
dataset no source provides raises ``DatasetUnavailableError`` or, with ``allow_skip``, comes back as
a recorded skip (never a silent substitute).
"""
from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Callable

from forge.data import offline, splits
from forge.data.readers import join_problem, number_to_str, resolve_data_dir, strip_units

Record = dict[str, Any]

CATEGORIES = ("math", "qa", "code", "commonsense", "language")
SOURCE_KINDS = ("local", "hub", "offline")


class DatasetUnavailableError(RuntimeError):
    """No configured source could provide a dataset."""


# ---------------------------------------------------------------- training-text formats

def _strip_calculator(answer: str) -> str:
    # GSM8K marks calculator calls as "<<48/2=24>>"; they are tool annotations, not text.
    return re.sub(r"<<[^>]*>>", "", answer)


def format_gsm8k(record: Record) -> str:
    return f"Question: {record['question']}\nAnswer: {_strip_calculator(record['answer'])}"


def format_svamp(record: Record) -> str:
    return (f"Question: {record['question']}\nAnswer: {record['equation']} = {record['final_answer']}\n"
            f"#### {record['final_answer']}")


def format_asdiv(record: Record) -> str:
    return f"Question: {record['question']}\nAnswer: {record['formula']}\n#### {record['final_answer']}"


def format_mbpp(record: Record) -> str:
    tests = "\n".join(record["test_list"])
    return f'"""{record["text"]}"""\n{record["code"]}\n\n{tests}'


def format_code(record: Record) -> str:
    return record["code"]


def format_choice_qa(record: Record) -> str:
    return f"Question: {record['question']}\nAnswer: {record['choices'][record['label']]}"


def format_open_qa(record: Record) -> str:
    return f"Question: {record['question']}\nAnswer: {record['answer']}"


def format_drop(record: Record) -> str:
    return f"Passage: {record['passage']}\nQuestion: {record['question']}\nAnswer: {record['answer']}"


def format_boolq(record: Record) -> str:
    question = record["question"].rstrip("?")
    return (f"Passage: {record['passage']}\nQuestion: {question}?\n"
            f"Answer: {record['choices'][record['label']]}")


def format_strategyqa(record: Record) -> str:
    facts = " ".join(record["facts"])
    return f"Question: {record['question']}\nFacts: {facts}\nAnswer: {'Yes' if record['answer'] else 'No'}"


def format_piqa(record: Record) -> str:
    return f"Goal: {record['question']}\nSolution: {record['choices'][record['label']]}"


def format_hellaswag(record: Record) -> str:
    return f"{record['question']} {record['choices'][record['label']]}"


def format_plain(record: Record) -> str:
    return record["text"]


# ---------------------------------------------------------------- hub rows -> reader schema

def _hub_gsm8k(row: dict) -> Record:
    return {"question": row["question"], "answer": row["answer"]}


def _hub_svamp(row: dict) -> Record:
    return {"question": join_problem(row["Body"], row["Question"]), "equation": row["Equation"].strip(),
            "final_answer": number_to_str(row["Answer"])}


def _hub_asdiv(row: dict) -> Record:
    return {"question": join_problem(row["body"], row["question"]), "formula": row["formula"],
            "final_answer": strip_units(row["answer"])}


def _hub_mbpp(row: dict) -> Record:
    return {"text": row["text"], "code": row["code"], "test_list": list(row["test_list"])}


def _hub_codexglue(row: dict) -> Record:
    return {"code": row["code"]}


def _hub_arc(row: dict) -> Record:
    labels = list(row["choices"]["label"])
    return {"question": row["question"], "choices": list(row["choices"]["text"]),
            "label": labels.index(row["answerKey"])}


def _hub_hotpotqa(row: dict) -> Record:
    return {"question": row["question"], "answer": row["answer"]}


def _hub_drop(row: dict) -> Record:
    spans = list(row["answers_spans"]["spans"])
    return {"passage": row["passage"], "question": row["question"], "answer": ", ".join(spans)}


def _hub_strategyqa(row: dict) -> Record:
    return {"question": row["question"], "answer": bool(row["answer"]), "facts": list(row.get("facts") or [])}


def _hub_piqa(row: dict) -> Record:
    return {"question": row["goal"], "choices": [row["sol1"], row["sol2"]], "label": int(row["label"])}


def _hub_hellaswag(row: dict) -> Record:
    return {"question": row["ctx"], "choices": list(row["endings"]), "label": int(row["label"])}


def _hub_boolq(row: dict) -> Record:
    return {"passage": row["passage"], "question": row["question"], "choices": ["no", "yes"],
            "label": int(bool(row["answer"]))}


def _hub_text(row: dict) -> Record | None:
    text = row["text"].strip()
    return {"text": text} if text else None  # WikiText rows include blank lines


# ---------------------------------------------------------------- registry

@dataclass(frozen=True)
class HubLocation:
    """Where a dataset lives on the Hugging Face Hub and how its rows map to our record schema."""

    path: str  # hub dataset id
    config: str | None  # dataset configuration name
    split: str  # a training split (never the split our local evaluation copy comes from)
    to_record: Callable[[dict], Record | None]  # hub row -> the readers' schema; None: skip the row
    # the hub split is the very set our local evaluation copy holds: keep only its train side
    train_side_only: bool = False


@dataclass(frozen=True)
class DatasetSource:
    """One curriculum dataset."""

    name: str  # registry key (also the forge.data.splits name where a local copy exists)
    display_name: str  # the spec's name
    category: str  # one of CATEGORIES
    format_text: Callable[[Record], str]  # record -> training text
    hub: HubLocation | None  # online source; None: generated here, nothing to download
    has_local: bool  # whether the reference data folder holds a copy (read via forge.data.splits)
    offline: str | None  # forge.data.offline generator standing in for it, labelled as such; None: none


DATASETS: dict[str, DatasetSource] = {source.name: source for source in (
    DatasetSource("gsm8k", "GSM8K", "math", format_gsm8k,
                  HubLocation("openai/gsm8k", "main", "train", _hub_gsm8k), True, "arithmetic_word_problems"),
    DatasetSource("svamp", "SVAMP", "math", format_svamp,
                  HubLocation("ChilleD/SVAMP", None, "train", _hub_svamp), True, "arithmetic_word_problems"),
    DatasetSource("asdiv", "ASDiv", "math", format_asdiv,
                  HubLocation("EleutherAI/asdiv", None, "validation", _hub_asdiv, train_side_only=True), True,
                  "arithmetic_word_problems"),
    DatasetSource("mbpp", "Mini-MBPP", "code", format_mbpp,
                  HubLocation("google-research-datasets/mbpp", "full", "train", _hub_mbpp), True,
                  "python_stdlib_code"),
    DatasetSource("codexglue", "CodeXGLUE", "code", format_code,
                  HubLocation("google/code_x_glue_ct_code_to_text", "python", "train", _hub_codexglue), False,
                  "python_stdlib_code"),
    DatasetSource("arc_easy", "ARC-Easy", "qa", format_choice_qa,
                  HubLocation("allenai/ai2_arc", "ARC-Easy", "train", _hub_arc), True, "synthetic_qa"),
    DatasetSource("arc_challenge", "ARC-Challenge", "qa", format_choice_qa,
                  HubLocation("allenai/ai2_arc", "ARC-Challenge", "train", _hub_arc), True, "synthetic_qa"),
    DatasetSource("hotpotqa", "HotpotQA", "qa", format_open_qa,
                  HubLocation("hotpotqa/hotpot_qa", "distractor", "train", _hub_hotpotqa), True, "synthetic_qa"),
    DatasetSource("drop", "DROP", "qa", format_drop,
                  HubLocation("ucinlp/drop", None, "train", _hub_drop), True, "synthetic_qa"),
    DatasetSource("boolq", "BoolQ", "qa", format_boolq,
                  HubLocation("google/boolq", None, "train", _hub_boolq), True, "synthetic_qa"),
    DatasetSource("strategyqa", "StrategyQA", "commonsense", format_strategyqa,
                  HubLocation("ChilleD/StrategyQA", None, "train", _hub_strategyqa), True, None),
    DatasetSource("piqa", "PIQA", "commonsense", format_piqa,
                  HubLocation("baber/piqa", None, "train", _hub_piqa), True, None),
    DatasetSource("hellaswag", "HellaSwag", "commonsense", format_hellaswag,
                  HubLocation("Rowan/hellaswag", None, "train", _hub_hellaswag), True, None),
    DatasetSource("wikitext", "WikiText", "language", format_plain,
                  HubLocation("Salesforce/wikitext", "wikitext-103-raw-v1", "train", _hub_text), True,
                  "python_stdlib_docstrings"),
    DatasetSource("fineweb_edu", "FineWeb-Edu", "language", format_plain,
                  HubLocation("HuggingFaceFW/fineweb-edu", "sample-10BT", "train", _hub_text), False,
                  "python_stdlib_docstrings"),
    # Generated problems (forge.data.taskworld), train side only; benchmarks' "taskworld" task holds out the rest.
    DatasetSource("taskworld", "Task world", "math", format_plain, None, False, "taskworld"),
    DatasetSource("taskworld_direct", "Task world (direct answers)", "math", format_plain, None, False,
                  "taskworld_direct"),
)}


@dataclass(frozen=True)
class SourceConfig:
    """How curriculum datasets are loaded."""

    order: tuple[str, ...] = ("local", "hub", "offline")  # sources to try; the first that has the data wins
    data_dir: str | None = None  # reference data folder; None: FORGE_DATA_DIR
    max_items: int | None = None  # cap per dataset (a seeded sample); None: every local item
    stream_items: int = 2000  # items taken from the hub or generated offline when max_items is None
    allow_skip: bool = False  # a dataset with no source becomes a recorded skip instead of an error
    seed: int = 0  # sampling and offline generation seed
    heldout_fraction: float = splits.DEFAULT_HELDOUT_FRACTION  # local held-out share (kept out of training)

    def __post_init__(self) -> None:
        unknown = [kind for kind in self.order if kind not in SOURCE_KINDS]
        if unknown or not self.order:
            raise ValueError(f"source order {self.order!r} must list some of {SOURCE_KINDS}")
        if self.max_items is not None and self.max_items < 1:
            raise ValueError(f"max_items={self.max_items} must be >= 1 or None")
        if self.stream_items < 1:
            raise ValueError(f"stream_items={self.stream_items} must be >= 1")

    @property
    def generated_items(self) -> int:
        """How many items the hub and offline sources provide."""
        return self.max_items if self.max_items is not None else self.stream_items


@dataclass
class LoadedTexts:
    """The texts of one dataset and where they came from."""

    dataset: str  # registry key
    category: str  # curriculum category
    source: str | None  # "local:<folder>", "hub:<id>[/<config>]:<split>", "offline:<generator>"; None: skipped
    texts: list[str] = field(default_factory=list)  # formatted training texts
    attempts: list[str] = field(default_factory=list)  # why each earlier source was not used
    dropped_heldout_overlap: int = 0  # hub items removed because they match local held-out items

    @property
    def skipped(self) -> bool:
        return self.source is None

    def summary(self) -> dict[str, Any]:
        """JSON-ready record of this load (without the texts)."""
        return {"dataset": self.dataset, "category": self.category, "source": self.source,
                "items": len(self.texts), "attempts": list(self.attempts),
                "dropped_heldout_overlap": self.dropped_heldout_overlap}


class _SourceLacksDataset(LookupError):
    """The source has no entry for this dataset (no local copy, no offline stand-in)."""


def _dataset_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{name}/{seed}".encode()).digest()[:4], "big")


def _sample(records: list[Record], limit: int | None, seed: int) -> list[Record]:
    if limit is None or len(records) <= limit:
        return records
    return random.Random(seed).sample(records, limit)


def _fetch_local(source: DatasetSource, config: SourceConfig) -> tuple[str, list[Record]]:
    if not source.has_local:
        raise _SourceLacksDataset(f"{source.display_name} has no copy in the reference data folder")
    folder = resolve_data_dir(config.data_dir)
    records = splits.train_items(source.name, folder, heldout_fraction=config.heldout_fraction)
    return f"local:{folder}", _sample(records, config.max_items, _dataset_seed(config.seed, source.name))


def _fetch_hub(source: DatasetSource, config: SourceConfig, extra: int) -> tuple[str, list[dict]]:
    from datasets import load_dataset

    hub = source.hub
    rows = load_dataset(hub.path, hub.config, split=hub.split, streaming=True)
    label = f"hub:{hub.path}" + (f"/{hub.config}" if hub.config else "") + f":{hub.split}"
    return label, list(islice(rows, config.generated_items + extra))


def _heldout_keys(source: DatasetSource, config: SourceConfig) -> set[str]:
    """Partition keys of the local held-out items (empty when there is no readable local copy)."""
    if not source.has_local:
        return set()
    try:
        items = splits.heldout_items(source.name, config.data_dir, heldout_fraction=config.heldout_fraction)
    except FileNotFoundError:
        return set()  # no local data on this machine, hence no local evaluation items to protect
    key = splits.PARTITION_KEYS.get(source.name)
    return {str(key(item)) for item in items} if key else set()


def _hub_records(source: DatasetSource, config: SourceConfig, rows: list[dict],
                 protected: set[str]) -> tuple[list[Record], int]:
    # The local evaluation copies of some sets overlap hub training splits (the local StrategyQA dev
    # is a 10% slice of the official train set), so rows matching a held-out item are dropped.
    key = splits.PARTITION_KEYS.get(source.name)
    records, dropped = [], 0
    for row in rows:
        record = source.hub.to_record(row)
        if record is None:
            continue
        if source.hub.train_side_only and not splits.partition(
                source.name, [record], heldout_fraction=config.heldout_fraction)[0]:
            continue
        if key and str(key(record)) in protected:
            dropped += 1
            continue
        records.append(record)
        if len(records) == config.generated_items:
            break
    return records, dropped


def get_source(name: str) -> DatasetSource:
    """The registry entry of dataset ``name``."""
    if name not in DATASETS:
        raise ValueError(f"unknown curriculum dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def load_texts(name: str, config: SourceConfig = SourceConfig()) -> LoadedTexts:
    """Training texts for dataset ``name`` from the first source in ``config.order`` that has it."""
    source = get_source(name)
    loaded = LoadedTexts(dataset=name, category=source.category, source=None)
    for kind in config.order:
        # Only fetching is guarded: a missing copy or unreachable hub is OSError (FileNotFoundError,
        # ConnectionError), a source without this dataset _SourceLacksDataset, no hub client
        # ImportError. Mapping and formatting errors are bugs and propagate.
        try:
            if kind == "local":
                label, records = _fetch_local(source, config)
            elif kind == "hub":
                if source.hub is None:
                    raise _SourceLacksDataset(f"{source.display_name} is generated, not on the hub")
                protected = _heldout_keys(source, config)
                label, rows = _fetch_hub(source, config, extra=len(protected))
            elif source.offline is None:
                raise _SourceLacksDataset(f"{source.display_name} has no offline stand-in")
            else:
                label = offline.source_label(source.offline)
                texts = offline.generate_offline(source.offline, config.generated_items,
                                                 _dataset_seed(config.seed, name))
        except (OSError, ImportError, _SourceLacksDataset) as err:
            loaded.attempts.append(f"{kind}: {type(err).__name__}: {err}")
            continue
        if kind == "hub":
            records, loaded.dropped_heldout_overlap = _hub_records(source, config, rows, protected)
        if kind != "offline":
            texts = [source.format_text(record) for record in records]
        texts = [text for text in texts if text.strip()]
        if not texts:
            loaded.attempts.append(f"{kind}: {label} gave no texts")
            continue
        loaded.source, loaded.texts = label, texts
        return loaded
    if config.allow_skip:
        return loaded
    raise DatasetUnavailableError(
        f"no source could provide {source.display_name} ({name}); tried {', '.join(config.order)}: "
        + "; ".join(loaded.attempts)
        + ". Fix: set FORGE_DATA_DIR to the reference data folder, allow the hub, add 'offline' to the "
        "source order where the dataset has an offline stand-in, or set allow_skip to record it as skipped.")
