"""The task world: determinism, train/held-out separation by canonical form, exact scoring, traces that
hold, one token per digit, and the benchmark tasks built on it."""
import random
import re

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from benchmarks import evaluate
from benchmarks.tasks import get_task, load_docs
from benchmarks.tooluse_tools import find_call
from forge.data import sources, taskworld
from forge.data.arithmetic import calculate
from forge.data.tokenizer import train_bpe_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def train_items():
    return taskworld.generate_items(3000, split="train", seed=7)


@pytest.fixture(scope="module")
def heldout_items():
    return taskworld.heldout_set(30)


def test_generation_is_deterministic_by_seed():
    first = taskworld.generate_items(300, seed=3)
    assert first == taskworld.generate_items(300, seed=3)
    assert first != taskworld.generate_items(300, seed=4)
    assert taskworld.training_texts(200, seed=3) == taskworld.training_texts(200, seed=3)
    assert taskworld.training_texts(200, seed=3) != taskworld.training_texts(200, seed=4)
    assert {item.cell for item in first} == {f"{f}_{level}" for f in taskworld.FAMILIES for level in taskworld.LEVELS}


def test_canonical_form_ignores_wording_and_operand_order():
    assert taskworld.canonical_step(85, "+", 347) == taskworld.canonical_step(347, "+", 85) == "85+347"
    assert taskworld.canonical_step(5, "*", 12) == taskworld.canonical_step(12, "*", 5)
    assert taskworld.canonical_step(12, "-", 5) != taskworld.canonical_step(5, "-", 12)
    # A one-step story is the same problem as the bare sum, so it lands on the same side.
    rng = random.Random(0)
    stories = [taskworld.generate_item("word", 1, rng) for _ in range(200)]
    story = next(item for item in stories if "+" in item.canonical)
    a, b = map(int, story.canonical.split("+"))
    assert taskworld.is_heldout(story.canonical) == taskworld.is_heldout(taskworld.canonical_step(b, "+", a))


def test_train_and_heldout_never_share_a_problem(train_items, heldout_items):
    assert not any(taskworld.is_heldout(item.canonical) for item in train_items)
    assert all(taskworld.is_heldout(item.canonical) for item in heldout_items)
    taskworld.check_disjoint(train_items, heldout_items)
    with pytest.raises(ValueError, match="1 problems are in both"):
        taskworld.check_disjoint(train_items, heldout_items + [train_items[0]])
    # About HELDOUT_FRACTION of problems are held out (a large cell, drawn without the side filter).
    rng = random.Random(1)
    drawn = [taskworld.GENERATORS["add"](4, rng) for _ in range(4000)]
    share = sum(taskworld.is_heldout(item.canonical) for item in drawn) / len(drawn)
    assert abs(share - taskworld.HELDOUT_FRACTION) < 0.03
    # The fixed held-out set has distinct problems and the same items on every call.
    assert len({item.canonical for item in heldout_items}) == len(heldout_items)
    assert heldout_items == taskworld.heldout_set(30)


def test_exact_scoring_rejects_near_misses():
    assert taskworld.is_correct("432", "Answer: 432\n")
    assert taskworld.is_correct("432", "Work: 2+0+0=2, 3+0+0=3, 4+0+0=4\nAnswer: 432\nQuestion: ...")
    assert taskworld.is_correct("432", "<calc>347+85</calc>\n<result>432</result>\n<answer>432</answer>")
    for near_miss in ("Answer: 431", "Answer: 4320", "Answer: 0432", "Answer: 432.0", "Answer: 43", "Answer:",
                      "432", "Work: 4+3+2=432", "Answer: 431\nAnswer: 432", ""):
        assert not taskworld.is_correct("432", near_miss), near_miss
    assert taskworld.extract_answer("Work: 7+5+0=12\nAnswer:  1735 \n") == "1735"
    assert taskworld.extract_answer("no answer here") is None


def test_every_trace_holds_and_composes_the_answer(train_items, heldout_items):
    for item in train_items + heldout_items:
        taskworld.check_item(item)
    add = taskworld.generate_item("add", 3, random.Random(2))
    broken_step = add.steps[0].replace("=", "=1", 1)
    with pytest.raises(ValueError, match="do not hold"):
        taskworld.check_item(taskworld.TaskItem(**{**add.__dict__, "steps": (broken_step, *add.steps[1:])}))
    with pytest.raises(ValueError, match="answer"):
        taskworld.check_item(taskworld.TaskItem(**{**add.__dict__, "answer": str(int(add.answer) + 1)}))
    item = taskworld.TaskItem("add", 3, "What is 347+85?", "432", ("7+5+0=12", "4+8+1=13", "3+0+1=4"), ("347+85",),
                              "85+347")
    taskworld.check_item(item)
    assert taskworld.target(item, "work") == "Work: 7+5+0=12, 4+8+1=13, 3+0+1=4\nAnswer: 432\n"
    with pytest.raises(ValueError, match="compose 442"):  # every step holds, the digits do not make 432
        taskworld.check_item(taskworld.TaskItem(**{**item.__dict__, "steps": ("7+5+0=12", "4+8+2=14", "3+0+1=4")}))
    compare = taskworld.TaskItem("cmp", 3, "Which is larger, 347 or 385?", "385",
                                 ("3 digits vs 3 digits", "3=3", "4<8"), ("385-347",), "cmp:347,385")
    taskworld.check_item(compare)
    with pytest.raises(ValueError, match="digit comparisons"):  # "3<8" holds, but it is not 347 against 385
        taskworld.check_item(taskworld.TaskItem(**{**compare.__dict__, "steps": ("3 digits vs 3 digits", "3<8")}))


def test_modes_change_the_expected_output_and_calculator_transcripts_run():
    item = taskworld.generate_item("word", 3, random.Random(5))
    prompts = {mode: taskworld.prompt(item, mode) for mode in taskworld.MODES}
    targets = {mode: taskworld.target(item, mode) for mode in taskworld.MODES}
    assert len(set(prompts.values())) == len(set(targets.values())) == 3
    assert all(prompt.endswith(f"Question: {item.question}\n") for prompt in prompts.values())
    assert targets["direct"] == f"Answer: {item.answer}\n"
    # The calculator transcript, read the way the tool-use loop reads a turn: every call's result is right.
    rest, calls = targets["calculator"], 0
    while True:
        before, opened, rest = find_call(rest)
        if opened != "calc":
            assert opened == "answer" and rest == f"{item.answer}</answer>"
            break
        expression, _, rest = rest.partition("</calc>")
        result = re.match(r"\n<result>(.*?)</result>\n", rest)
        assert result.group(1) == calculate(expression)
        calls += 1
    assert calls == len(item.steps) == 3
    assert taskworld.extract_answer(targets["calculator"]) == item.answer
    with pytest.raises(ValueError, match="mode"):
        taskworld.prompt(item, "verbose")


def test_bad_choices_name_the_fix():
    with pytest.raises(ValueError, match="choose some of add"):
        taskworld.generate_items(5, families=["division"])
    with pytest.raises(ValueError, match="levels"):
        taskworld.generate_items(5, levels=[0])
    with pytest.raises(ValueError, match="split"):
        taskworld.generate_item("add", 1, random.Random(0), split="test")


def test_trained_bpe_gives_one_token_per_digit_and_round_trips():
    texts = taskworld.training_texts(400, seed=0) + ["Prices rose 1,250.75 percent in 2024; -42 and 007 too."] * 3
    tokenizer = train_bpe_tokenizer(texts, vocab_size=400, seed=0)
    for text in ("Question: What is 81644+33481?\nAnswer: 115125\n", "1,250.75 and -42, 007 or 2024.", "x12y 9"):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
        pieces = [tokenizer.decode([i]) for i in ids]
        assert all(len(re.findall(r"\d", piece)) <= 1 for piece in pieces), pieces
    assert len(tokenizer("115125", add_special_tokens=False)["input_ids"]) == 6


def test_the_curriculum_source_draws_the_train_side_only(heldout_items):
    loaded = sources.load_texts("taskworld", sources.SourceConfig(max_items=600))
    assert loaded.source == "offline:taskworld" and loaded.category == "math" and len(loaded.texts) == 600
    heldout_texts = {taskworld.text(item, mode) for item in heldout_items for mode in taskworld.MODES}
    assert not heldout_texts & set(loaded.texts)
    assert any(text.startswith("Show your work.") for text in loaded.texts)
    assert loaded.texts == taskworld.curriculum_texts(600, seed=sources._dataset_seed(0, "taskworld"))
    direct = sources.load_texts("taskworld_direct", sources.SourceConfig(max_items=600))
    assert direct.source == "offline:taskworld_direct" and not heldout_texts & set(direct.texts)
    assert all(text.startswith("Question: ") and text.count("\n") == 2 and "\nAnswer: " in text
               for text in direct.texts)


def test_benchmark_tasks_load_the_heldout_side_and_score_exactly():
    task = get_task("taskworld")
    docs = load_docs(task, None, heldout_only=True)
    assert len({doc["id"] for doc in docs}) == len(docs) > 500
    assert all(taskworld.is_heldout(doc["id"].split("/", 2)[2]) for doc in docs)
    assert task.score_generation(docs[0], docs[0]["target"]) == {"exact_match": 1.0}
    assert task.score_generation(docs[0], f"Answer: {docs[0]['answer']}0\n") == {"exact_match": 0.0}
    work = load_docs(get_task("taskworld_work"), None)
    assert work[0]["prompt"].startswith("Show your work.\n") and work[0]["target"].startswith("Work: ")
    easy = load_docs(get_task("taskworld_easy"), None)
    assert {doc["cell"] for doc in easy} == {"add_1", "add_2", "cmp_1", "cmp_2"}


def test_harness_scores_taskworld_generations_per_cell():
    from forge.data.tokenizer import load_gpt2_tokenizer

    tokenizer = load_gpt2_tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=len(tokenizer), n_positions=256))
    result = evaluate(model.eval(), tokenizer, ["taskworld_easy"], limit=12, seed=1, log_samples=True)["taskworld_easy"]
    docs = {doc["id"]: doc for doc in load_docs(get_task("taskworld_easy"), None)}
    for sample in result.samples:
        assert sample["exact_match"] == float(taskworld.is_correct(docs[sample["id"]]["answer"], sample["generation"]))
    assert result.metrics["exact_match"] == sum(s["exact_match"] for s in result.samples) / 12
    assert set(result.metrics) - {"exact_match", "guess_accuracy"} <= {"exact_match/add_1", "exact_match/add_2",
                                                                       "exact_match/cmp_1", "exact_match/cmp_2"}
    assert len(result.metrics) > 3
    # The floor "above chance" means, on the 12 items evaluated: the mean of their uniform guesses.
    expected = sum(taskworld.guess_accuracy(docs[s["id"]]["family"], docs[s["id"]]["level"]) for s in result.samples)
    assert result.metrics["guess_accuracy"] == pytest.approx(expected / 12)


@pytest.mark.parametrize("family", ["add", "sub", "cmp"])
@pytest.mark.parametrize("level", [1, 2])
def test_a_guess_is_right_once_per_possible_answer(family, level):
    # Every answer the generator's operands can give, enumerated: a uniform guess among them is right 1/len times.
    numbers = range(10 ** level)
    answers = ({a + b for a in numbers for b in numbers} if family == "add"
               else {a - b for a in numbers for b in numbers if b <= a} if family == "sub" else None)
    expected = 0.5 if family == "cmp" else 1 / len(answers)  # cmp: either of the two numbers shown
    assert taskworld.guess_accuracy(family, level) == pytest.approx(expected)
    rng = random.Random(0)
    items = [taskworld.generate_item(family, level, rng) for _ in range(200)]
    assert all(int(item.answer) in answers for item in items) if answers else all(
        item.answer in item.question for item in items)


def test_the_scoreboards_easy_items_have_a_guess_floor_and_others_name_why_not():
    easy = load_docs(get_task("taskworld_easy"), None)
    floor = sum(taskworld.guess_accuracy(doc["family"], doc["level"]) for doc in easy) / len(easy)
    cells = {cell: sum(doc["cell"] == cell for doc in easy) for cell in ("add_1", "add_2", "cmp_1", "cmp_2")}
    assert floor == pytest.approx((cells["add_1"] / 19 + cells["add_2"] / 199 + (cells["cmp_1"] + cells["cmp_2"]) / 2)
                                  / len(easy))
    assert get_task("taskworld").guess_accuracy is None  # mul and word answers span no range
    with pytest.raises(ValueError, match="no uniform guess"):
        taskworld.guess_accuracy("mul", 1)
    with pytest.raises(ValueError, match=r"levels \[6\]"):
        taskworld.guess_accuracy("add", 6)
