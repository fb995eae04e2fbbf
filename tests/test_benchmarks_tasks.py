"""Tasks on the real reference data: prompt formats, sampling, held-out items, evaluate and its cache."""
import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from benchmarks import ResultCache, evaluate
from benchmarks.lm import encode_pair
from benchmarks.tasks import build_contexts, get_task, load_docs, load_fewshot_pool, select_docs
from forge.data import splits
from forge.data.tokenizer import load_gpt2_tokenizer


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer():
    return load_gpt2_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=len(tokenizer),
                                      n_positions=512)).eval()


def test_prompts_follow_lm_eval_formats(shared_data):
    arc = get_task("arc_easy")
    doc = load_docs(arc, shared_data)[0]
    assert build_contexts(arc, [doc], num_fewshot=0, pool=None, seed=1, prompt=None) == [
        "Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:"]
    assert arc.doc_to_choice(doc)[doc["label"]] == "Sunlight is the source of energy for nearly all ecosystems."

    mmlu = get_task("mmlu")
    doc = load_docs(mmlu, shared_data)[0]
    pool = load_fewshot_pool(mmlu, shared_data)
    context = build_contexts(mmlu, [doc], num_fewshot=2, pool=pool, seed=1, prompt=None)[0]
    assert context.startswith("The following are multiple choice questions (with answers) about abstract algebra.\n\n")
    dev = [shot for shot in pool if shot["subject"] == "abstract_algebra"]
    assert context.count("\nAnswer:") == 3 and dev[0]["question"].strip() in context  # first_n from dev
    assert context.endswith(f"{doc['question'].strip()}\nA. {doc['choices'][0]}\nB. {doc['choices'][1]}\n"
                            f"C. {doc['choices'][2]}\nD. {doc['choices'][3]}\nAnswer:")

    boolq = get_task("boolq")
    doc = load_docs(boolq, shared_data)[0]
    text = boolq.doc_to_text(doc)
    assert text.startswith(doc["passage"]) and text.endswith(f"\nQuestion: {doc['question']}\nAnswer:")

    hellaswag = get_task("hellaswag")
    doc = {"question": "A man [title] stands.  He", "activity_label": "Yoga", "choices": ["[step] sits down."],
           "label": 0}
    assert hellaswag.doc_to_text(doc) == "Yoga: A man. stands. He"
    assert hellaswag.doc_to_choice(doc) == [" sits down."]  # lm-eval strips before removing "[step]"


def test_fewshot_and_limit_are_seeded(shared_data):
    gsm8k = get_task("gsm8k")
    docs = select_docs(load_docs(gsm8k, shared_data), 3, seed=7)
    assert docs == select_docs(load_docs(gsm8k, shared_data), 3, seed=7)
    assert docs != select_docs(load_docs(gsm8k, shared_data), 3, seed=8)
    pool = load_fewshot_pool(gsm8k, shared_data)
    first = build_contexts(gsm8k, docs, num_fewshot=5, pool=pool, seed=1234, prompt="You are careful.")
    assert first == build_contexts(gsm8k, docs, num_fewshot=5, pool=pool, seed=1234, prompt="You are careful.")
    assert first != build_contexts(gsm8k, docs, num_fewshot=5, pool=pool, seed=99, prompt="You are careful.")
    for context, doc in zip(first, docs):
        assert context.startswith("You are careful.\n\nQuestion: ")
        assert context.count("Question: ") == 6 and context.count("#### ") == 5
        assert context.endswith(f"Question: {doc['question']}\nAnswer:")
    mbpp = get_task("mbpp")
    mbpp_pool = load_fewshot_pool(mbpp, shared_data)
    assert [shot["task_id"] for shot in mbpp_pool] == [2, 3, 4]
    with pytest.raises(ValueError, match="limit"):
        select_docs(docs, 0, seed=1)


def test_heldout_items_never_overlap_pretraining_items(shared_data):
    arc = get_task("arc_easy")
    heldout = load_docs(arc, shared_data, heldout_only=True)
    train_questions = {doc["question"] for doc in splits.train_items("arc_easy", shared_data)}
    assert 0 < len(heldout) < len(load_docs(arc, shared_data))
    assert not train_questions & {doc["question"] for doc in heldout}
    # Sets pretraining never reads are held out whole.
    assert len(load_docs(get_task("humaneval"), shared_data, heldout_only=True)) == 164


def test_multiple_choice_accuracy_equals_a_naive_loop(model, tokenizer, shared_data):
    arc = get_task("arc_easy")
    docs = select_docs(load_docs(arc, shared_data), 12, seed=3)
    result = evaluate(model, tokenizer, ["arc_easy"], limit=12, seed=3, data_dir=shared_data)["arc_easy"]
    correct = correct_norm = 0
    for doc in docs:
        context = arc.doc_to_text(doc)
        scores = []
        for choice in doc["choices"]:
            context_ids, cont_ids = encode_pair(tokenizer, context, " " + choice)
            with torch.no_grad():
                logprobs = F.log_softmax(model(torch.tensor([context_ids + cont_ids])).logits, dim=-1)[0]
            scores.append(sum(float(logprobs[len(context_ids) - 1 + j, t]) for j, t in enumerate(cont_ids)))
        correct += max(range(len(scores)), key=lambda i: (scores[i], -i)) == doc["label"]
        normed = [s / len(c) for s, c in zip(scores, doc["choices"])]
        correct_norm += max(range(len(normed)), key=lambda i: (normed[i], -i)) == doc["label"]
    assert result.n_items == 12
    assert result.metrics["acc"] == pytest.approx(correct / 12)
    assert result.metrics["acc_norm"] == pytest.approx(correct_norm / 12)
    assert result.score == result.metrics["acc_norm"]


def test_every_kind_of_task_runs_end_to_end(model, tokenizer, shared_data):
    results = evaluate(model, tokenizer, ["mmlu", "gsm8k", "svamp", "math", "humaneval", "wikitext"], limit=2,
                       num_fewshot=1, max_new_tokens=6, data_dir=shared_data)
    assert results["mmlu"].n_items == 2 and 0.0 <= results["mmlu"].metrics["acc"] <= 1.0
    assert set(results["gsm8k"].metrics) == {"exact_match_strict", "exact_match_flexible"}
    assert set(results["humaneval"].metrics) == {"pass@1"}
    assert results["math"].primary_metric == "exact_match"
    # Per-group scores: MMLU by subject, MATH by level (the spec's per-category and difficulty breakdowns).
    subjects = [key for key in results["mmlu"].metrics if key.startswith("acc/")]
    assert 1 <= len(subjects) <= 2
    assert any(key.startswith("exact_match/level_") for key in results["math"].metrics)
    # A random model is about as surprised as a uniform guess over the 50257 tokens.
    assert 5_000 < results["wikitext"].metrics["perplexity"] < 500_000
    with pytest.raises(ValueError, match="unknown task 'arc'"):
        evaluate(model, tokenizer, ["arc"], data_dir=shared_data)


def test_cache_returns_identical_results_without_running_the_model(model, tokenizer, shared_data, tmp_path):
    calls = []
    handle = model.register_forward_hook(lambda *args: calls.append(1))
    try:
        cache = ResultCache(tmp_path / "cache")
        kwargs = dict(limit=8, data_dir=shared_data, cache=cache, prompt="You are a careful scientist.")
        first = evaluate(model, tokenizer, ["arc_easy", "piqa"], **kwargs)
        assert calls and not any(r.cached for r in first.values())
        calls.clear()
        again = evaluate(model, tokenizer, ["arc_easy", "piqa"], **kwargs)
        assert not calls and all(r.cached for r in again.values())
        assert {k: r.metrics for k, r in again.items()} == {k: r.metrics for k, r in first.items()}
        # A fresh cache object on the same directory (another process) also hits.
        reloaded = evaluate(model, tokenizer, ["arc_easy"], **{**kwargs, "cache": ResultCache(tmp_path / "cache")})
        assert not calls and reloaded["arc_easy"].cached
        # Another prompt or other weights are different candidates.
        evaluate(model, tokenizer, ["arc_easy"], **{**kwargs, "prompt": "You are a poet."})
        assert calls
        calls.clear()
        with torch.no_grad():
            model.transformer.wte.weight[0, 0] += 1.0
        try:
            changed = evaluate(model, tokenizer, ["arc_easy"], **kwargs)
        finally:
            with torch.no_grad():
                model.transformer.wte.weight[0, 0] -= 1.0
        assert calls and not changed["arc_easy"].cached
    finally:
        handle.remove()


HUB_ROWS = {
    "arc_easy": {"id": "Q1", "question": "Which is a gas?", "answerKey": "B",
                 "choices": {"text": ["rock", "steam", "ice", "wood"], "label": ["A", "B", "C", "D"]}},
    "hellaswag": {"ind": 7, "activity_label": "Yoga", "ctx_a": "A man stands.", "ctx_b": "he", "ctx": "",
                  "endings": ["sits.", "runs.", "flies.", "sleeps."], "label": "1"},
    "piqa": {"goal": "Open a jar", "sol1": "twist the lid", "sol2": "eat the lid", "label": 0},
    "boolq": {"question": "is water wet", "passage": "Water is a liquid.", "answer": True},
    "mmlu": {"question": "2+2?", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "6"], "answer": 1},
    "gsm8k": {"question": "1+1?", "answer": "1+1=2\n#### 2"},
    "math": {"problem": "1+1?", "level": "Level 1", "type": "Algebra", "solution": "It is $\\boxed{2}$."},
    "svamp": {"ID": "chal-1", "Body": "Tom has 3 apples", "Question": "How many?", "Equation": "( 3.0 )",
              "Answer": 3.0, "Type": "Common"},
    "humaneval": {"task_id": "HumanEval/0", "prompt": "def f():\n", "canonical_solution": "    return 1\n",
                  "test": "def check(c):\n    assert c() == 1\n", "entry_point": "f"},
    "mbpp": {"task_id": 11, "text": "Return 1.", "code": "def f():\n    return 1", "test_list": ["assert f() == 1"] * 3,
             "test_setup_code": ""},
}


@pytest.mark.parametrize("name", sorted(HUB_ROWS))
def test_hub_rows_convert_to_the_local_schema(name):
    task = get_task(name)
    doc = task.from_hub(HUB_ROWS[name])
    context = build_contexts(task, [doc], num_fewshot=0, pool=None, seed=1, prompt=None)[0]
    assert context.endswith(task.doc_to_text(doc)) and context
    if task.kind == "multiple_choice":
        choices = task.doc_to_choice(doc)
        assert 0 <= doc["label"] < len(choices)
    elif task.kind == "generate":
        assert set(task.score_generation(doc, "so #### 2")) <= {"exact_match_strict", "exact_match_flexible",
                                                               "exact_match"}
    else:
        assert "return 1" in task.program(doc, HUB_ROWS[name].get("canonical_solution", "    return 1\n"))
    assert get_task("hellaswag").from_hub(HUB_ROWS["hellaswag"])["question"] == "A man stands. He"
    assert get_task("wikitext").from_hub({"text": " \n"}) is None


def test_code_sampling_is_seeded_and_reports_pass_at_k(model, tokenizer, shared_data):
    kwargs = dict(limit=1, num_samples=3, temperature=1.0, max_new_tokens=5, data_dir=shared_data, log_samples=True)
    first = evaluate(model, tokenizer, ["humaneval"], **kwargs)["humaneval"]
    again = evaluate(model, tokenizer, ["humaneval"], **kwargs)["humaneval"]
    completions = first.samples[0]["completions"]
    assert len(completions) == 3 and len(set(completions)) > 1  # sampled, not greedy
    assert again.samples[0]["completions"] == completions
    assert set(first.metrics) == {"pass@1"} and first.metrics["pass@1"] == first.samples[0]["correct"] / 3


def test_generated_reasoning_task_runs_without_a_data_folder(model, tokenizer, monkeypatch):
    """synthetic_reasoning needs no data: its items are the held-out side of Phase 3's generated problems."""
    from forge.data.readers import DATA_DIR_ENV
    from forge.quietstar.synthetic import SyntheticReasoningGenerator

    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    task = get_task("synthetic_reasoning")
    docs = load_docs(task, None, heldout_only=True)
    assert len(docs) == len({doc["id"] for doc in docs}) > 100
    train_questions = {e.question for e in SyntheticReasoningGenerator().generate(2000)}
    assert not train_questions & {doc["question"] for doc in docs}
    for doc in docs:
        assert len(set(doc["choices"])) == len(doc["choices"]) >= 2
    result = evaluate(model, tokenizer, ["synthetic_reasoning"], limit=24, data_dir=None)["synthetic_reasoning"]
    assert result.n_items == 24 and 0.0 <= result.score <= 1.0
    assert any(key.startswith("acc/synthetic-") for key in result.metrics), result.metrics
