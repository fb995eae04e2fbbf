"""Readers for the local reference data (the formats listed in the data folder's README.md).

Every reader takes ``data_dir`` (the reference data folder; ``None`` means ``FORGE_DATA_DIR``) and
returns a list of plain dicts in one normalised schema per kind of task. Every record has a string
``"id"`` that is stable for the file (the dataset's own id where it has one, else ``"<split>-<line>"``);
``forge.data.splits.partition`` hashes it.

Schemas
- Math word problems: ``read_gsm8k`` -> ``{"id", "question", "answer", "final_answer"}`` where
  ``answer`` is GSM8K's worked solution ending in ``#### N`` and ``final_answer`` is ``N``.
  ``read_svamp`` -> ``{"id", "question", "equation", "final_answer", "type"}``.
  ``read_asdiv`` -> ``{"id", "question", "formula", "final_answer", "answer_text", "solution_type",
  "grade"}`` (``answer_text`` keeps the unit, e.g. ``"9 (apples)"``; ``final_answer`` is ``"9"``).
  ``read_math`` -> ``{"id", "problem", "solution", "final_answer", "level", "type"}`` (``final_answer``
  is the last ``\\boxed{}`` content, ``level`` an int 1-5 or None).
  ``final_answer`` is always a string; numbers are written without a trailing ``.0``.
- Multiple choice: ``{"id", "question", "choices", "label"}`` (``label`` = index of the right choice),
  plus ``"passage"`` (BoolQ), ``"activity_label"`` (HellaSwag), ``"subject"`` (MMLU).
  ``read_arc``, ``read_piqa``, ``read_hellaswag``, ``read_boolq``, ``read_mmlu``.
- Open QA: ``read_strategyqa`` -> ``{"id", "question", "answer": bool, "facts", "decomposition"}``;
  ``read_hotpotqa`` -> ``{"id", "question", "answer", "type"}``;
  ``read_drop`` -> ``{"id", "passage", "question", "answer", "answers"}`` (``answers``: every accepted
  reference, ``answer``: the first).
- Code: ``read_humaneval`` -> ``{"id", "task_id", "prompt", "entry_point", "canonical_solution", "test"}``;
  ``read_mbpp`` -> ``{"id", "task_id", "text", "code", "test_list", "test_setup_code"}``;
  ``read_swebench`` -> the SWE-bench records as shipped plus ``"id"`` (= ``instance_id``);
  ``read_swebench_ids`` -> list of instance-id strings.
- Plain text: ``read_wikitext`` -> one record per article ``{"id", "title", "text"}``;
  ``read_pretrain_text`` -> ``{"id", "source", "title", "text"}`` (Tiny Shakespeare cut into chunks of
  whole speeches, one record per State of the Union / inaugural speech).
"""
from __future__ import annotations

import csv
import gzip
import json
import os
import re
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import Any, Iterator

DATA_DIR_ENV = "FORGE_DATA_DIR"

Record = dict[str, Any]

# MBPP's own split by task_id (google-research/mbpp README).
MBPP_SPLITS: dict[str, range] = {
    "prompt": range(1, 11),
    "test": range(11, 511),
    "validation": range(511, 601),
    "train": range(601, 975),
}

# Tiny Shakespeare is one 1.1 MB file; cutting it into chunks of whole speeches gives documents that
# can be split between training and validation.
SHAKESPEARE_CHUNK_CHARS = 2000


def default_data_dir() -> Path | None:
    """The reference data folder named by FORGE_DATA_DIR, or None when the variable is unset."""
    value = os.environ.get(DATA_DIR_ENV)
    return Path(value).expanduser() if value else None


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """``data_dir`` if given, else FORGE_DATA_DIR; raises FileNotFoundError if neither is a folder."""
    path = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if path is None:
        raise FileNotFoundError(
            f"no reference data folder: pass data_dir=... or set {DATA_DIR_ENV} to the folder that "
            f"holds gsm8k/, arc/, ... (e.g. export {DATA_DIR_ENV}=../shared/data)")
    if not path.is_dir():
        raise FileNotFoundError(
            f"reference data folder {path} does not exist: set {DATA_DIR_ENV} (or data_dir=) to the "
            "folder that holds gsm8k/, arc/, ...")
    return path


def _data_file(data_dir: str | os.PathLike | None, *parts: str) -> Path:
    path = resolve_data_dir(data_dir).joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: {DATA_DIR_ENV} (or data_dir=) must point at the reference data folder "
            f"that contains {'/'.join(parts)}")
    return path


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not available; choose one of {', '.join(allowed)}")


def _iter_jsonl(path: Path) -> Iterator[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def number_to_str(value: float | int | str) -> str:
    """Canonical text of a numeric answer: ``51.0`` -> ``"51"``, ``"1,000"`` -> ``"1000"``."""
    text = str(value).strip().replace(",", "")
    try:
        number = float(text)
    except ValueError:
        return text
    if number.is_integer():
        return str(int(number))
    return repr(number)


def strip_units(answer_text: str) -> str:
    """ASDiv answer without its units: ``"9 (apples)"`` -> ``"9"``."""
    return number_to_str(re.sub(r"\s*\([^)]*\)", "", answer_text).strip())


def last_boxed_only_string(text: str) -> str | None:
    """The last ``\\boxed{...}`` (or ``\\fbox{...}``) with balanced braces, or None."""
    idx = text.rfind("\\boxed")
    if idx < 0:
        idx = text.rfind("\\fbox")
        if idx < 0:
            return None
    if text.startswith("\\boxed ", idx):
        # "\boxed 5" form: the answer runs to the next "$" or the end.
        return "\\boxed " + text[idx + len("\\boxed "):].split("$")[0]
    depth = 0
    for pos in range(idx, len(text)):
        if text[pos] == "{":
            depth += 1
        elif text[pos] == "}":
            depth -= 1
            if depth == 0:
                return text[idx:pos + 1]
    return None


def remove_boxed(text: str) -> str:
    """``\\boxed{x}`` -> ``x``."""
    for prefix in ("\\boxed ", "\\boxed{", "\\fbox{"):
        if text.startswith(prefix):
            return text[len(prefix):] if prefix.endswith(" ") else text[len(prefix):-1]
    raise ValueError(f"not a boxed expression: {text[:40]!r}")


def last_boxed(solution: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in a MATH solution (``\\fbox`` only when there is no ``\\boxed``)."""
    boxed = last_boxed_only_string(solution)
    return None if boxed is None else remove_boxed(boxed)


# ---------------------------------------------------------------- math word problems

def read_gsm8k(data_dir: str | os.PathLike | None = None, split: str = "test") -> list[Record]:
    """GSM8K ``split`` in {"train", "test"} (7473 / 1319 problems)."""
    _check_choice("split", split, ("train", "test"))
    records = []
    for index, row in enumerate(_iter_jsonl(_data_file(data_dir, "gsm8k", f"{split}.jsonl"))):
        answer = row["answer"]
        if "####" not in answer:
            raise ValueError(f"GSM8K {split} line {index + 1} has no '#### N' final answer")
        records.append({"id": f"{split}-{index}", "question": row["question"], "answer": answer,
                        "final_answer": number_to_str(answer.rsplit("####", 1)[1])})
    return records


def read_svamp(data_dir: str | os.PathLike | None = None) -> list[Record]:
    """SVAMP (1000 problems); ``question`` is the body followed by the question sentence."""
    rows = _read_json(_data_file(data_dir, "svamp", "SVAMP.json"))
    return [{"id": row["ID"], "question": join_problem(row["Body"], row["Question"]),
             "equation": row["Equation"].strip(), "final_answer": number_to_str(row["Answer"]),
             "type": row["Type"]} for row in rows]


def join_problem(body: str, question: str) -> str:
    """A word problem's body and question as one text (SVAMP bodies may lack the final period)."""
    body = body.strip()
    if body and body[-1] not in ".!?":
        body += "."
    return f"{body} {question.strip()}"


def read_asdiv(data_dir: str | os.PathLike | None = None) -> list[Record]:
    """ASDiv (2305 problems, CC BY-NC); ``final_answer`` drops the unit in parentheses."""
    root = ET.parse(_data_file(data_dir, "asdiv", "ASDiv.xml")).getroot()
    records = []
    for problem in root.iter("Problem"):
        answer_text = (problem.findtext("Answer") or "").strip()
        records.append({
            "id": problem.get("ID"),
            "question": join_problem(problem.findtext("Body") or "", problem.findtext("Question") or ""),
            "formula": (problem.findtext("Formula") or "").strip(),
            "final_answer": strip_units(answer_text),
            "answer_text": answer_text,
            "solution_type": (problem.findtext("Solution-Type") or "").strip(),
            "grade": int(problem.get("Grade")) if problem.get("Grade", "").isdigit() else None,
        })
    return records


def read_math(data_dir: str | os.PathLike | None = None, subset: str = "test") -> list[Record]:
    """MATH ``subset`` "test" (5000 problems) or "math500" (the 500-problem MATH-500 subset)."""
    _check_choice("subset", subset, ("test", "math500"))
    name = "test.jsonl" if subset == "test" else "math500_test.jsonl"
    records = []
    for index, row in enumerate(_iter_jsonl(_data_file(data_dir, "math", name))):
        level = row.get("level")
        if isinstance(level, str):
            digits = re.findall(r"\d+", level)
            level = int(digits[0]) if digits else None
        final = row.get("answer") or last_boxed(row["solution"])
        records.append({
            "id": row.get("unique_id") or f"{subset}-{index}",
            "problem": row["problem"], "solution": row["solution"],
            "final_answer": final if final is not None else "",
            "level": level, "type": row.get("type") or row.get("subject"),
        })
    return records


# ---------------------------------------------------------------- multiple choice

def read_arc(data_dir: str | os.PathLike | None = None, subset: str = "easy") -> list[Record]:
    """ARC test, ``subset`` "easy" (2376) or "challenge" (1172); 4 choices each."""
    _check_choice("subset", subset, ("easy", "challenge"))
    path = _data_file(data_dir, "arc", f"arc_{subset}_test.jsonl")
    return [{"id": f"test-{index}", "question": row["query"].removeprefix("Question: ").strip(),
             "choices": list(row["choices"]), "label": int(row["gold"])}
            for index, row in enumerate(_iter_jsonl(path))]


def read_piqa(data_dir: str | os.PathLike | None = None) -> list[Record]:
    """PIQA valid (1838): ``question`` is the goal, ``choices`` the two solutions."""
    rows = list(_iter_jsonl(_data_file(data_dir, "piqa", "valid.jsonl")))
    labels = _data_file(data_dir, "piqa", "valid-labels.lst").read_text(encoding="utf-8").split()
    if len(labels) != len(rows):
        raise ValueError(f"PIQA valid has {len(rows)} items but {len(labels)} labels; the files must align")
    return [{"id": f"valid-{index}", "question": row["goal"], "choices": [row["sol1"], row["sol2"]],
             "label": int(label)} for index, (row, label) in enumerate(zip(rows, labels))]


def read_hellaswag(data_dir: str | os.PathLike | None = None) -> list[Record]:
    """HellaSwag validation, the local random subset of 1000; ``question`` is the context.

    The context is built as lm-evaluation-harness does (``ctx_a + " " + ctx_b.capitalize()``), so both
    harnesses score the same text (``ctx`` joins them without the capital).
    """
    path = _data_file(data_dir, "hellaswag", "hellaswag_val_subset1000.jsonl")
    return [{"id": str(row["ind"]), "question": f"{row['ctx_a']} {row['ctx_b'].capitalize()}".strip(),
             "choices": list(row["endings"]),
             "label": int(row["label"]), "activity_label": row["activity_label"]}
            for row in _iter_jsonl(path)]


def read_boolq(data_dir: str | os.PathLike | None = None) -> list[Record]:
    """BoolQ validation (3270); choices are ["no", "yes"]."""
    records = []
    for index, row in enumerate(_iter_jsonl(_data_file(data_dir, "boolq", "boolq_val.jsonl"))):
        passage, separator, question = row["query"].rpartition("\nQuestion: ")
        if not separator:
            raise ValueError(f"BoolQ line {index + 1} lacks the 'Passage: ...\\nQuestion: ...' layout")
        records.append({"id": f"val-{index}", "passage": passage.removeprefix("Passage: ").strip(),
                        "question": question.strip(), "choices": list(row["choices"]),
                        "label": int(row["gold"])})
    return records


def read_mmlu(data_dir: str | os.PathLike | None = None, split: str = "test") -> list[Record]:
    """MMLU ``split`` "test" (14042, 57 subjects), "dev" (285, 5 per subject) or "stem" (3018)."""
    _check_choice("split", split, ("test", "dev", "stem"))
    if split == "stem":
        path = _data_file(data_dir, "mmlu", "mmlu_stem_test.jsonl")
        return [{"id": f"stem-{index}", "question": row["question"], "choices": list(row["choices"]),
                 "label": int(row["answer"]), "subject": row["type"]}
                for index, row in enumerate(_iter_jsonl(path))]
    folder = _data_file(data_dir, "mmlu", split)
    suffix = f"_{split}.csv"
    files = sorted(folder.glob(f"*{suffix}"))
    if not files:
        raise FileNotFoundError(f"no *{suffix} files in {folder}: point {DATA_DIR_ENV} at the full data folder")
    records = []
    for path in files:
        subject = path.name.removesuffix(suffix)
        with open(path, encoding="utf-8", newline="") as handle:
            for index, row in enumerate(csv.DictReader(handle)):
                records.append({"id": f"{subject}-{index}", "question": row["question"],
                                "choices": [row[f"choice{i}"] for i in range(4)],
                                "label": int(row["answer"]), "subject": subject})
    return records


# ---------------------------------------------------------------- open QA

def read_strategyqa(data_dir: str | os.PathLike | None = None) -> list[Record]:
    """StrategyQA dev (229, an unofficial 10% split of the official train set); yes/no answers."""
    rows = _read_json(_data_file(data_dir, "strategyqa", "dev.json"))
    return [{"id": row["qid"], "question": row["question"], "answer": bool(row["answer"]),
             "facts": list(row.get("facts", [])), "decomposition": list(row.get("decomposition", []))}
            for row in rows]


def read_hotpotqa(data_dir: str | os.PathLike | None = None) -> list[Record]:
    """HotpotQA dev distractor (7405), questions and answers only (no supporting paragraphs)."""
    rows = _read_json(_data_file(data_dir, "hotpotqa", "hotpot_dev_v1_simplified.json"))
    return [{"id": f"dev-{index}", "question": row["question"], "answer": row["answer"],
             "type": row["type"]} for index, row in enumerate(rows)]


def read_drop(data_dir: str | os.PathLike | None = None) -> list[Record]:
    """DROP dev (9536) from the simple-evals layout "Passage: ...\\nQuestion: ...\\nAnswer:"."""
    records = []
    for index, row in enumerate(_iter_jsonl(_data_file(data_dir, "drop", "drop_v0_dev.jsonl.gz"))):
        context = row["context"].removesuffix("\nAnswer:")
        passage, separator, question = context.rpartition("\nQuestion: ")
        if not separator:
            raise ValueError(f"DROP line {index + 1} lacks the 'Passage: ...\\nQuestion: ...' layout")
        answers = [answer.strip() for answer in row["ref_text"].split("|") if answer.strip()]
        records.append({"id": f"dev-{index}", "passage": passage.removeprefix("Passage: ").strip(),
                        "question": question.strip(), "answer": answers[0] if answers else "",
                        "answers": answers})
    return records


# ---------------------------------------------------------------- code

def read_humaneval(data_dir: str | os.PathLike | None = None) -> list[Record]:
    """HumanEval (164 problems)."""
    path = _data_file(data_dir, "humaneval", "HumanEval.jsonl.gz")
    return [{"id": row["task_id"], "task_id": row["task_id"], "prompt": row["prompt"],
             "entry_point": row["entry_point"], "canonical_solution": row["canonical_solution"],
             "test": row["test"]} for row in _iter_jsonl(path)]


def read_mbpp(data_dir: str | os.PathLike | None = None, split: str = "test",
              variant: str = "full") -> list[Record]:
    """MBPP ``variant`` "full" (974) or "sanitized" (427), ``split`` by task_id as in MBPP's README:
    "prompt" 1-10, "test" 11-510, "validation" 511-600, "train" 601-974, or "all"."""
    _check_choice("split", split, (*MBPP_SPLITS, "all"))
    _check_choice("variant", variant, ("full", "sanitized"))
    if variant == "full":
        rows = list(_iter_jsonl(_data_file(data_dir, "mbpp", "mbpp.jsonl")))
    else:
        rows = [{"text": row["prompt"], "code": row["code"], "task_id": row["task_id"],
                 "test_list": row["test_list"], "test_setup_code": "\n".join(row.get("test_imports", []))}
                for row in _read_json(_data_file(data_dir, "mbpp", "sanitized-mbpp.json"))]
    wanted = range(1, 975) if split == "all" else MBPP_SPLITS[split]
    return [{"id": str(row["task_id"]), "task_id": int(row["task_id"]), "text": row["text"],
             "code": row["code"].replace("\r\n", "\n"), "test_list": list(row["test_list"]),
             "test_setup_code": row.get("test_setup_code", "")}
            for row in rows if int(row["task_id"]) in wanted]


def read_swebench(data_dir: str | os.PathLike | None = None, subset: str = "lite") -> list[Record]:
    """The five local SWE-bench records of ``subset`` "lite" (Lite test) or "dev" (dev, easy).

    The "dev" file as shipped holds pylint-dev__astroid-1268 twice; records are returned as they are."""
    _check_choice("subset", subset, ("lite", "dev"))
    name = "swe-bench-lite-test_5instances.json" if subset == "lite" else "swe-bench-dev-easy_5instances.json"
    return [{"id": row["instance_id"], **row} for row in _read_json(_data_file(data_dir, "swebench", name))]


def read_swebench_ids(data_dir: str | os.PathLike | None = None, subset: str = "lite") -> list[str]:
    """Instance ids of SWE-bench ``subset`` "lite" (300), "verified" (500) or "full" (2294)."""
    _check_choice("subset", subset, ("lite", "verified", "full"))
    text = _data_file(data_dir, "swebench", f"swe_{subset}_tasks.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


# ---------------------------------------------------------------- plain text

_WIKITEXT_TITLE = re.compile(r"^ = ([^=].*[^=]) = $")


def read_wikitext(data_dir: str | os.PathLike | None = None, split: str = "valid") -> list[Record]:
    """WikiText-2 (raw tokenized release with ``<unk>``) ``split`` "valid" or "test", one record per
    article; ``text`` keeps the file's lines (headings included) so the articles concatenate back."""
    _check_choice("split", split, ("valid", "test"))
    lines = _data_file(data_dir, "wikitext2", f"{split}.txt").read_text(encoding="utf-8").splitlines()
    articles: list[tuple[str, list[str]]] = []
    for line in lines:
        match = _WIKITEXT_TITLE.match(line)
        if match:
            articles.append((match.group(1).strip(), []))
        if articles:
            articles[-1][1].append(line)
    return [{"id": f"{split}-{index}", "title": title, "text": "\n".join(body).strip()}
            for index, (title, body) in enumerate(articles)]


def _decode_legacy(raw: bytes) -> str:
    # A few NLTK speech files are Windows-1252/Latin-1, not UTF-8.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def read_pretrain_text(data_dir: str | os.PathLike | None = None) -> list[Record]:
    """Plain pretraining text: Tiny Shakespeare (chunks of whole speeches of about
    SHAKESPEARE_CHUNK_CHARS characters), then every State of the Union and inaugural speech."""
    records: list[Record] = []
    text = _data_file(data_dir, "pretrain_text", "tinyshakespeare.txt").read_text(encoding="utf-8")
    chunk: list[str] = []
    size = 0
    for speech in text.split("\n\n"):
        chunk.append(speech)
        size += len(speech) + 2
        if size >= SHAKESPEARE_CHUNK_CHARS:
            records.append({"id": f"tinyshakespeare-{len(records)}", "source": "tinyshakespeare",
                            "title": "tinyshakespeare", "text": "\n\n".join(chunk).strip()})
            chunk, size = [], 0
    if chunk:
        records.append({"id": f"tinyshakespeare-{len(records)}", "source": "tinyshakespeare",
                        "title": "tinyshakespeare", "text": "\n\n".join(chunk).strip()})
    for corpus in ("state_union", "inaugural"):
        with zipfile.ZipFile(_data_file(data_dir, "pretrain_text", f"{corpus}.zip")) as archive:
            for name in sorted(archive.namelist()):
                if not name.endswith(".txt"):
                    continue
                title = Path(name).stem
                records.append({"id": f"{corpus}-{title}", "source": corpus, "title": title,
                                "text": _decode_legacy(archive.read(name)).strip()})
    return records
