"""Task definitions: where the items come from and how they are prompted and scored.

Prompt formats follow lm-evaluation-harness 0.4 (task YAMLs ``arc_easy``, ``hellaswag``, ``piqa``,
``boolq``, ``mmlu`` (default), ``gsm8k``, ``hendrycks_math``, ``humaneval``, ``mbpp``): an n-shot
context is ``description + sum(text(shot) + " " + target(shot) + "\\n\\n") + text(item)`` and a choice
is scored as the continuation ``" " + choice``.

Items come from the local reference data through ``forge.data.readers`` (``data_dir`` or
``FORGE_DATA_DIR``), or from the Hugging Face hub (``data_dir="hub"``, needs network) converted to the
same normalised schema.
"""
from __future__ import annotations

import hashlib
import os
import random
import re
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Literal

from forge.data import readers, splits

from benchmarks import scoring

Doc = dict[str, Any]
HUB = "hub"
TaskKind = Literal["multiple_choice", "generate", "code", "perplexity"]


@dataclass(frozen=True)
class Task:
    """One benchmark: its items, prompt format and scoring."""

    name: str  # registry key, e.g. "arc_easy"
    kind: TaskKind  # how it is scored
    read_local: Callable[[Any], list[Doc]]  # data_dir -> normalised items (forge.data.readers)
    hub: tuple[str, str | tuple[str, ...] | None, str] | None  # (hub dataset id, config name(s), split); None: generated
    from_hub: Callable[[dict], Doc | None] | None  # hub row -> normalised item (None: skip the row)
    primary_metric: str  # the metric used by aggregate_score
    doc_to_text: Callable[[Doc], str] = lambda doc: ""  # the prompt of one item
    doc_to_target: Callable[[Doc], str] = lambda doc: ""  # the answer shown in few-shot examples
    doc_to_choice: Callable[[Doc], list[str]] | None = None  # multiple choice: the continuations
    description: Callable[[Doc], str] = lambda doc: ""  # text before the few-shot examples
    target_delimiter: str = " "  # between a prompt and its answer or choice
    default_fewshot: int = 0  # lm-eval's default number of examples
    read_fewshot: Callable[[Any], list[Doc]] | None = None  # few-shot pool; None: the other items
    fewshot_first_n: bool = False  # take the pool's first n (lm-eval "first_n"), else a seeded sample
    fewshot_same: Callable[[Doc], Any] | None = None  # restrict the pool to items with equal value
    until: tuple[str, ...] = ()  # stop sequences of generation
    max_new_tokens: int = 256  # generation budget (lm-eval max_gen_toks)
    score_generation: Callable[[Doc, str], dict[str, float]] | None = None  # generate: item metrics
    program: Callable[[Doc, str], str] | None = None  # code: the test program of a completion
    split_dataset: str | None = None  # name in forge.data.splits for the held-out half
    group_by: Callable[[Doc], str] | None = None  # also report the primary metric per group (subject, level)
    guess_accuracy: Callable[[Doc], float] | None = None  # the item's primary metric under a uniform guess


# ---------------------------------------------------------------- prompt formats (lm-eval)

def _question_answer(doc: Doc) -> str:
    return f"Question: {doc['question']}\nAnswer:"


def _hellaswag_preprocess(text: str) -> str:
    # lm-eval hellaswag utils.preprocess: WikiHow artefacts removed.
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag_text(doc: Doc) -> str:
    return _hellaswag_preprocess(f"{doc['activity_label']}: {doc['question']}")


def _boolq_text(doc: Doc) -> str:
    question = doc["question"] if doc["question"].endswith("?") else doc["question"] + "?"
    return f"{doc['passage']}\nQuestion: {question}\nAnswer:"


MMLU_LETTERS = ["A", "B", "C", "D"]
MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                 "prealgebra", "precalculus")


def _mmlu_text(doc: Doc) -> str:
    lines = [doc["question"].strip()]
    lines += [f"{letter}. {choice}" for letter, choice in zip(MMLU_LETTERS, doc["choices"])]
    return "\n".join(lines) + "\nAnswer:"


def _mmlu_description(doc: Doc) -> str:
    subject = doc["subject"].replace("_", " ")
    return f"The following are multiple choice questions (with answers) about {subject}.\n\n"


def _math_text(doc: Doc) -> str:
    return f"Problem: {doc['problem']}\nAnswer:"


def _mbpp_text(doc: Doc) -> str:
    tests = "\n".join(doc["test_list"])
    return (f"You are an expert Python programmer, and here is your task: {doc['text']} "
            f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n")


# ---------------------------------------------------------------- scoring of generations

def _score_gsm8k(doc: Doc, generation: str) -> dict[str, float]:
    return {
        "exact_match_strict": float(scoring.number_match(scoring.extract_strict(generation), doc["answer"])),
        "exact_match_flexible": float(scoring.number_match(scoring.extract_flexible(generation), doc["answer"])),
    }


def _score_svamp(doc: Doc, generation: str) -> dict[str, float]:
    predicted = scoring.extract_flexible(generation)
    return {"exact_match_flexible": float(scoring.number_match(predicted, doc["final_answer"], numeric=True))}


def _score_math(doc: Doc, generation: str) -> dict[str, float]:
    answer = scoring.extract_math_answer(generation)
    return {"exact_match": float(scoring.math_equivalent(answer, doc["final_answer"]))}


def _humaneval_program(doc: Doc, completion: str) -> str:
    return f"{doc['prompt']}{completion}\n\n{doc['test']}\n\ncheck({doc['entry_point']})\n"


def _mbpp_program(doc: Doc, completion: str) -> str:
    # Setup code may use the solution's definitions (task 367 builds a tree of its Node class).
    return f"{completion}\n\n{doc['test_setup_code']}\n" + "\n".join(doc["test_list"]) + "\n"


# ---------------------------------------------------------------- hub rows -> normalised items

def _hub_arc(row: dict) -> Doc:
    labels = list(row["choices"]["label"])
    return {"id": row["id"], "question": row["question"], "choices": list(row["choices"]["text"]),
            "label": labels.index(row["answerKey"])}


def _hub_hellaswag(row: dict) -> Doc:
    # lm-eval: ctx_a + " " + ctx_b.capitalize()
    return {"id": str(row["ind"]), "question": f"{row['ctx_a']} {row['ctx_b'].capitalize()}",
            "choices": list(row["endings"]), "label": int(row["label"]), "activity_label": row["activity_label"]}


def _hub_piqa(row: dict) -> Doc:
    return {"id": row.get("id", row["goal"]), "question": row["goal"], "choices": [row["sol1"], row["sol2"]],
            "label": int(row["label"])}


def _hub_boolq(row: dict) -> Doc:
    return {"id": row["question"], "passage": row["passage"], "question": row["question"],
            "choices": ["no", "yes"], "label": int(bool(row["answer"]))}


def _hub_mmlu(row: dict) -> Doc:
    return {"id": row["question"], "question": row["question"], "choices": list(row["choices"]),
            "label": int(row["answer"]), "subject": row["subject"]}


def _hub_gsm8k(row: dict) -> Doc:
    return {"id": row["question"], "question": row["question"], "answer": row["answer"],
            "final_answer": readers.number_to_str(row["answer"].rsplit("####", 1)[1])}


def _hub_math(row: dict) -> Doc:
    return {"id": row.get("unique_id", row["problem"]), "problem": row["problem"], "solution": row["solution"],
            "final_answer": row.get("answer") or scoring.math_reference_answer(row["solution"]),
            "level": row.get("level"), "type": row.get("type") or row.get("subject")}


def _hub_svamp(row: dict) -> Doc:
    return {"id": row["ID"], "question": f"{row['Body'].strip()} {row['Question'].strip()}",
            "equation": row["Equation"], "final_answer": readers.number_to_str(row["Answer"]), "type": row["Type"]}


def _hub_humaneval(row: dict) -> Doc:
    return {"id": row["task_id"], **{key: row[key] for key in
                                     ("task_id", "prompt", "entry_point", "canonical_solution", "test")}}


def _hub_mbpp(row: dict) -> Doc:
    return {"id": str(row["task_id"]), "task_id": int(row["task_id"]), "text": row["text"], "code": row["code"],
            "test_list": list(row["test_list"]), "test_setup_code": row.get("test_setup_code", "")}


def _hub_wikitext(row: dict) -> Doc | None:
    # The hub has one row per line; blank lines carry nothing to score.
    if not row["text"].strip():
        return None
    return {"id": hashlib.sha1(row["text"].encode()).hexdigest()[:16], "title": "", "text": row["text"]}


# ---------------------------------------------------------------- generated items

SYNTHETIC_REASONING_ITEMS = 400


def _answer_choices(answer: str, rng: random.Random) -> list[str]:
    """The answer and its distractors: the other side of a two-way question, else near numbers and "unknown"."""
    for pair in (("yes", "no"), ("even", "odd")):
        if answer in pair:
            return list(pair)
    if answer == "unknown":
        return ["unknown", *(str(rng.randint(2, 60)) for _ in range(3))]
    value = float(answer)
    step = 1 if value == int(value) else 0.1
    near = [value + step, value + 10 * step, value - step if value - step > 0 else value + 2 * step]
    return [answer, *(readers.number_to_str(round(v, 6)) for v in near), "unknown"]


def read_synthetic_reasoning(data_dir: Any = None) -> list[Doc]:
    """Multiple-choice items from the held-out side of Phase 3's generated problems (no data folder needed).

    The distractors sit next to the answer (n +- 1, n + 10) or are "unknown", which is right only for
    questions that leave a quantity unstated; choices are shuffled per item by a seeded generator.
    """
    from forge.quietstar.synthetic import SyntheticConfig, SyntheticReasoningGenerator

    docs = []
    for example in SyntheticReasoningGenerator(SyntheticConfig(heldout=True)).generate(SYNTHETIC_REASONING_ITEMS):
        rng = random.Random(example.id)
        choices = list(dict.fromkeys(_answer_choices(example.answer, rng)))
        rng.shuffle(choices)
        docs.append({"id": example.id, "question": example.question, "choices": choices,
                     "label": choices.index(example.answer), "kind": example.source})
    return docs


TASKWORLD_PER_CELL = 40  # held-out problems per (family, level) of the task world (level 1 has fewer)


def read_taskworld(data_dir: Any = None, *, mode: str = "direct", easy: bool = False) -> list[Doc]:
    """The task world's fixed held-out set (``forge.data.taskworld.heldout_set``), prompted in ``mode``;
    no data folder needed. ``easy``: only its easy families and levels (``EASY_FAMILIES``, ``EASY_LEVELS``)."""
    from forge.data import taskworld

    cells = {"families": taskworld.EASY_FAMILIES, "levels": taskworld.EASY_LEVELS} if easy else {}
    return [{"id": item.id, "prompt": taskworld.prompt(item, mode), "target": taskworld.target(item, mode),
             "answer": item.answer, "family": item.family, "level": item.level, "cell": item.cell}
            for item in taskworld.heldout_set(TASKWORLD_PER_CELL, **cells)]


def _score_taskworld(doc: Doc, generation: str) -> dict[str, float]:
    from forge.data.taskworld import is_correct

    return {"exact_match": float(is_correct(doc["answer"], generation))}


def _taskworld_guess(doc: Doc) -> float:
    from forge.data.taskworld import guess_accuracy

    return guess_accuracy(doc["family"], doc["level"])


def _taskworld(name: str, mode: str, easy: bool, until: tuple[str, ...], max_new_tokens: int) -> Task:
    # Only the easy families have a uniform guess (forge.data.taskworld.guess_accuracy).
    return Task(name=name, kind="generate", read_local=partial(read_taskworld, mode=mode, easy=easy), hub=None,
                from_hub=None, primary_metric="exact_match", doc_to_text=lambda doc: doc["prompt"],
                doc_to_target=lambda doc: doc["target"], target_delimiter="", until=until,
                max_new_tokens=max_new_tokens, score_generation=_score_taskworld, group_by=lambda doc: doc["cell"],
                guess_accuracy=_taskworld_guess if easy else None)


# ---------------------------------------------------------------- the registry

def _mc(name: str, read_local, hub, from_hub, doc_to_text, primary="acc_norm", **kwargs) -> Task:
    doc_to_choice = kwargs.pop("doc_to_choice", lambda doc: list(doc["choices"]))
    return Task(name=name, kind="multiple_choice", read_local=read_local, hub=hub, from_hub=from_hub,
                primary_metric=primary, doc_to_text=doc_to_text,
                doc_to_target=lambda doc: doc_to_choice(doc)[doc["label"]], doc_to_choice=doc_to_choice, split_dataset=name, **kwargs)


TASKS: dict[str, Task] = {task.name: task for task in [
    _mc("arc_easy", partial(readers.read_arc, subset="easy"), ("allenai/ai2_arc", "ARC-Easy", "test"),
        _hub_arc, _question_answer),
    _mc("arc_challenge", partial(readers.read_arc, subset="challenge"),
        ("allenai/ai2_arc", "ARC-Challenge", "test"), _hub_arc, _question_answer),
    _mc("hellaswag", readers.read_hellaswag, ("Rowan/hellaswag", None, "validation"), _hub_hellaswag,
        _hellaswag_text, doc_to_choice=lambda doc: [_hellaswag_preprocess(ending) for ending in doc["choices"]]),
    _mc("piqa", readers.read_piqa, ("ybisk/piqa", None, "validation"), _hub_piqa, _question_answer),
    _mc("boolq", readers.read_boolq, ("google/boolq", None, "validation"), _hub_boolq, _boolq_text,
        primary="acc"),
    Task(name="mmlu", kind="multiple_choice", read_local=partial(readers.read_mmlu, split="test"),
         hub=("cais/mmlu", "all", "test"), from_hub=_hub_mmlu, primary_metric="acc",
         doc_to_text=_mmlu_text, doc_to_target=lambda doc: MMLU_LETTERS[doc["label"]],
         doc_to_choice=lambda doc: list(MMLU_LETTERS), description=_mmlu_description,
         read_fewshot=partial(readers.read_mmlu, split="dev"), fewshot_first_n=True,
         fewshot_same=lambda doc: doc["subject"], group_by=lambda doc: doc["subject"]),
    Task(name="gsm8k", kind="generate", read_local=partial(readers.read_gsm8k, split="test"),
         hub=("openai/gsm8k", "main", "test"), from_hub=_hub_gsm8k, primary_metric="exact_match_flexible",
         doc_to_text=_question_answer, doc_to_target=lambda doc: doc["answer"], default_fewshot=5,
         read_fewshot=partial(readers.read_gsm8k, split="train"),
         until=("Question:", "</s>", "<|im_end|>"), max_new_tokens=256, score_generation=_score_gsm8k,
         split_dataset="gsm8k"),
    Task(name="svamp", kind="generate", read_local=readers.read_svamp, hub=("ChilleD/SVAMP", None, "test"),
         from_hub=_hub_svamp, primary_metric="exact_match_flexible", doc_to_text=_question_answer,
         doc_to_target=lambda doc: f"{doc['equation']} = {doc['final_answer']}",
         until=("Question:", "\n\n"), max_new_tokens=64, score_generation=_score_svamp, split_dataset="svamp"),
    Task(name="math", kind="generate", read_local=partial(readers.read_math, subset="test"),
         hub=("EleutherAI/hendrycks_math", MATH_SUBJECTS, "test"), from_hub=_hub_math, primary_metric="exact_match",
         doc_to_text=_math_text, doc_to_target=lambda doc: doc["solution"], until=("Problem:",),
         max_new_tokens=256, score_generation=_score_math, group_by=lambda doc: f"level_{doc['level']}"),
    Task(name="math500", kind="generate", read_local=partial(readers.read_math, subset="math500"),
         hub=("HuggingFaceH4/MATH-500", None, "test"), from_hub=_hub_math, primary_metric="exact_match",
         doc_to_text=_math_text, doc_to_target=lambda doc: doc["solution"], until=("Problem:",),
         max_new_tokens=256, score_generation=_score_math, group_by=lambda doc: f"level_{doc['level']}"),
    Task(name="humaneval", kind="code", read_local=readers.read_humaneval,
         hub=("openai/openai_humaneval", None, "test"), from_hub=_hub_humaneval, primary_metric="pass@1",
         doc_to_text=lambda doc: doc["prompt"], until=("\nclass", "\ndef", "\n#", "\nif", "\nprint"),
         max_new_tokens=512, program=_humaneval_program),
    Task(name="mbpp", kind="code", read_local=partial(readers.read_mbpp, split="test"),
         hub=("google-research-datasets/mbpp", "full", "test"), from_hub=_hub_mbpp, primary_metric="pass@1",
         doc_to_text=_mbpp_text, doc_to_target=lambda doc: f"{doc['code']}\n[DONE]", default_fewshot=3,
         target_delimiter="",
         read_fewshot=partial(readers.read_mbpp, split="prompt"), fewshot_first_n=True,
         until=("[DONE]",), max_new_tokens=512, program=_mbpp_program, split_dataset="mbpp"),
    Task(name="synthetic_reasoning", kind="multiple_choice", read_local=read_synthetic_reasoning, hub=None,
         from_hub=None, primary_metric="acc", doc_to_text=_question_answer,
         doc_to_target=lambda doc: doc["choices"][doc["label"]], doc_to_choice=lambda doc: list(doc["choices"]),
         group_by=lambda doc: doc["kind"]),
    # The task world's held-out problems: answer only (stops at the answer line's end), with the worked
    # trace ("Show your work."), and answer-only on the easy families and levels (what tiny models learn).
    _taskworld("taskworld", "direct", False, ("\n",), 16),
    _taskworld("taskworld_work", "work", False, ("\nQuestion:", "\n\n"), 192),
    _taskworld("taskworld_easy", "direct", True, ("\n",), 16),
    Task(name="wikitext", kind="perplexity", read_local=partial(readers.read_wikitext, split="test"),
         hub=("Salesforce/wikitext", "wikitext-2-v1", "test"), from_hub=_hub_wikitext,
         primary_metric="perplexity", split_dataset="wikitext"),
]}

# MBPP's few-shot examples are task ids 2, 3, 4 (the MBPP paper, lm-eval "prompt" split).
MBPP_FEWSHOT_IDS = (2, 3, 4)


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def _from_hub(task: Task) -> list[Doc]:
    import datasets  # only online users need the hub

    path, configs, split = task.hub
    docs = []
    for config in configs if isinstance(configs, tuple) else (configs,):
        docs.extend(doc for doc in map(task.from_hub, datasets.load_dataset(path, config, split=split)) if doc)
    return docs


def load_docs(task: Task, data_dir: str | os.PathLike | None, *, heldout_only: bool = False) -> list[Doc]:
    """The items of ``task``: local files (``data_dir`` or FORGE_DATA_DIR) or ``data_dir="hub"``.

    ``heldout_only`` keeps the half that ``forge.data.splits`` holds out of pretraining; sets that
    pretraining never reads (MMLU, MATH, HumanEval) are held out whole.
    """
    if data_dir == HUB and task.hub is not None:
        docs = _from_hub(task)
        if heldout_only and task.split_dataset in splits.SPLIT_PLANS:
            docs = splits.partition(task.split_dataset, docs)[1]
        return docs
    if heldout_only and task.split_dataset in splits.SPLIT_PLANS:
        plan = splits.SPLIT_PLANS[task.split_dataset]
        if plan.train_part is None:
            return splits.heldout_items(task.split_dataset, data_dir)
    return task.read_local(data_dir)


def load_fewshot_pool(task: Task, data_dir: str | os.PathLike | None) -> list[Doc] | None:
    """The few-shot pool of ``task`` (None: examples come from the evaluated items themselves)."""
    if task.read_fewshot is None or data_dir == HUB:
        return None
    pool = task.read_fewshot(data_dir)
    if task.name == "mbpp":
        pool = [doc for doc in pool if doc["task_id"] in MBPP_FEWSHOT_IDS]
    return pool


def select_docs(docs: list[Doc], limit: int | None, seed: int) -> list[Doc]:
    """``limit`` items drawn with a fixed seed (kept in file order), or all of them."""
    if limit is None or limit >= len(docs):
        return list(docs)
    if limit < 1:
        raise ValueError(f"limit must be a positive number of items, got {limit}")
    keep = sorted(random.Random(seed).sample(range(len(docs)), limit))
    return [docs[index] for index in keep]


def build_contexts(task: Task, docs: list[Doc], *, num_fewshot: int, pool: list[Doc] | None, seed: int,
                   prompt: str | None) -> list[str]:
    """The full context of every item: optional system prompt, description, examples, the item.

    Examples come from ``pool`` (the task's few-shot split, or all its items: the same objects as
    ``docs``), never the item itself."""
    rng = random.Random(seed)
    header = f"{prompt.rstrip()}\n\n" if prompt else ""
    contexts = []
    for doc in docs:
        shots: list[Doc] = []
        if num_fewshot > 0:
            candidates = pool if pool is not None else docs
            if task.fewshot_same is not None:
                key = task.fewshot_same(doc)
                candidates = [shot for shot in candidates if task.fewshot_same(shot) == key]
            if task.fewshot_first_n:
                shots = [shot for shot in candidates if shot is not doc][:num_fewshot]
            else:
                # Draw one extra and drop the item itself, as lm-eval does with a shared split.
                drawn = rng.sample(candidates, min(num_fewshot + 1, len(candidates)))
                shots = [shot for shot in drawn if shot is not doc][:num_fewshot]
        examples = "".join(f"{task.doc_to_text(shot)}{task.target_delimiter}{task.doc_to_target(shot)}\n\n"
                           for shot in shots)
        contexts.append(header + task.description(doc) + examples + task.doc_to_text(doc))
    return contexts
