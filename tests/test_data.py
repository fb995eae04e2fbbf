"""forge.data: tokenizers, readers of the real reference files, the partition, sources, curriculum, packing."""
import ast
import math
import random
import re

import pytest
import torch

from forge.data import lm_dataset, offline, readers, sources, splits
from forge.pretrain import stages as pretrain_stages
from forge.data.tokenizer import END_OF_TEXT, gpt2_tokenizer_dir, load_gpt2_tokenizer, train_bpe_tokenizer

UNICODE_TEXT = "Hello world, café déjà vu 日本語 🙂\n\tdef f(x):\n        return x ** 2  # done"


# ---------------------------------------------------------------- tokenizers

@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    yield load_gpt2_tokenizer()
    mp.undo()


def test_gpt2_tokenizer_is_the_real_bpe(gpt2):
    assert len(gpt2) == 50257
    assert gpt2("Hello world")["input_ids"] == [15496, 995]
    assert gpt2(" Hello world")["input_ids"] == [18435, 995]
    ids = gpt2(UNICODE_TEXT)["input_ids"]
    assert gpt2.decode(ids) == UNICODE_TEXT
    assert gpt2.eos_token == gpt2.bos_token == gpt2.pad_token == END_OF_TEXT
    assert gpt2.eos_token_id == gpt2.pad_token_id == 50256


def test_gpt2_tokenizer_cache_is_complete(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder = gpt2_tokenizer_dir()
    assert folder.parent == tmp_path / "agent-forge"
    assert sorted(p.name for p in folder.iterdir()) == ["merges.txt", "vocab.json"]
    assert gpt2_tokenizer_dir() == folder  # second call reuses it
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temp folders left behind


@pytest.fixture(scope="module")
def bpe_corpus():
    return offline.python_stdlib_docstrings(150, seed=0) + offline.arithmetic_word_problems(150, seed=0)


def test_trained_bpe_is_deterministic_and_round_trips(bpe_corpus, tmp_path):
    first = train_bpe_tokenizer(bpe_corpus, vocab_size=600, seed=0)
    second = train_bpe_tokenizer(bpe_corpus, vocab_size=600, seed=0)
    assert len(first) == 600
    assert first.get_vocab() == second.get_vocab()
    assert first(UNICODE_TEXT)["input_ids"] == second(UNICODE_TEXT)["input_ids"]
    assert first.decode(first(UNICODE_TEXT)["input_ids"]) == UNICODE_TEXT  # bytes never go unknown
    assert first.convert_tokens_to_ids(END_OF_TEXT) == 0 == first.eos_token_id == first.pad_token_id
    # BPE actually merged: common text takes fewer tokens than bytes.
    assert len(first(bpe_corpus[0])["input_ids"]) < len(bpe_corpus[0].encode()) / 2
    first.save_pretrained(tmp_path)
    from transformers import AutoTokenizer
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(UNICODE_TEXT)["input_ids"] == first(UNICODE_TEXT)["input_ids"]
    assert reloaded.eos_token == END_OF_TEXT


def test_trained_bpe_rejects_bad_input():
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe_tokenizer(["some text"], vocab_size=100)
    with pytest.raises(ValueError, match="non-empty"):
        train_bpe_tokenizer(["", ""], vocab_size=300)


# ---------------------------------------------------------------- readers on the real files

READER_CASES = [
    # (label, reader, kwargs, count from the data README / SOURCES.md, fields every record has)
    ("gsm8k-test", readers.read_gsm8k, {"split": "test"}, 1319, {"question", "answer", "final_answer"}),
    ("gsm8k-train", readers.read_gsm8k, {"split": "train"}, 7473, {"question", "answer", "final_answer"}),
    ("arc-easy", readers.read_arc, {"subset": "easy"}, 2376, {"question", "choices", "label"}),
    ("arc-challenge", readers.read_arc, {"subset": "challenge"}, 1172, {"question", "choices", "label"}),
    ("hellaswag", readers.read_hellaswag, {}, 1000, {"question", "choices", "label", "activity_label"}),
    ("piqa", readers.read_piqa, {}, 1838, {"question", "choices", "label"}),
    ("boolq", readers.read_boolq, {}, 3270, {"passage", "question", "choices", "label"}),
    ("mmlu-test", readers.read_mmlu, {"split": "test"}, 14042, {"question", "choices", "label", "subject"}),
    ("mmlu-dev", readers.read_mmlu, {"split": "dev"}, 285, {"question", "choices", "label", "subject"}),
    ("mmlu-stem", readers.read_mmlu, {"split": "stem"}, 3018, {"question", "choices", "label", "subject"}),
    ("math", readers.read_math, {"subset": "test"}, 5000, {"problem", "solution", "final_answer", "level", "type"}),
    ("math500", readers.read_math, {"subset": "math500"}, 500, {"problem", "solution", "final_answer"}),
    ("humaneval", readers.read_humaneval, {}, 164, {"task_id", "prompt", "entry_point", "canonical_solution", "test"}),
    ("mbpp-full", readers.read_mbpp, {"split": "all"}, 974, {"task_id", "text", "code", "test_list"}),
    ("mbpp-test", readers.read_mbpp, {"split": "test"}, 500, {"task_id", "text", "code", "test_list"}),
    ("mbpp-sanitized", readers.read_mbpp, {"split": "all", "variant": "sanitized"}, 427, {"text", "code"}),
    ("svamp", readers.read_svamp, {}, 1000, {"question", "equation", "final_answer"}),
    ("asdiv", readers.read_asdiv, {}, 2305, {"question", "formula", "final_answer", "answer_text"}),
    ("strategyqa", readers.read_strategyqa, {}, 229, {"question", "answer", "facts", "decomposition"}),
    ("hotpotqa", readers.read_hotpotqa, {}, 7405, {"question", "answer", "type"}),
    ("drop", readers.read_drop, {}, 9536, {"passage", "question", "answer", "answers"}),
    ("swebench-lite", readers.read_swebench, {"subset": "lite"}, 5, {"instance_id", "patch", "FAIL_TO_PASS"}),
    ("swebench-dev", readers.read_swebench, {"subset": "dev"}, 5, {"instance_id", "patch"}),
]


@pytest.mark.parametrize("label,reader,kwargs,count,fields", READER_CASES, ids=[c[0] for c in READER_CASES])
def test_reader_counts_and_fields(shared_data, label, reader, kwargs, count, fields):
    records = reader(shared_data, **kwargs)
    assert len(records) == count
    for record in records:
        assert fields | {"id"} <= record.keys(), f"{label}: {record.keys()}"
        assert isinstance(record["id"], str) and record["id"]
        if "choices" in record:
            assert 0 <= record["label"] < len(record["choices"])
        if "final_answer" in record:
            assert isinstance(record["final_answer"], str)


def test_reader_values(shared_data):
    gsm = readers.read_gsm8k(shared_data, "test")
    assert gsm[0]["final_answer"] == "18" and gsm[0]["answer"].endswith("#### 18")
    assert readers.read_svamp(shared_data)[0]["final_answer"] == "51"
    asdiv = readers.read_asdiv(shared_data)[0]
    assert (asdiv["final_answer"], asdiv["answer_text"]) == ("9", "9 (apples)")
    math_test = readers.read_math(shared_data)
    assert math_test[0]["final_answer"] == "2" and math_test[0]["level"] == 3
    assert all(record["final_answer"] for record in math_test)  # every solution has a \boxed answer
    assert readers.last_boxed(r"so $\boxed{\frac{1}{2}}$ and") == r"\frac{1}{2}"
    assert readers.read_arc(shared_data)[0]["question"].startswith("Which statement")  # "Question: " stripped
    assert {r["label"] for r in readers.read_piqa(shared_data)} == {0, 1}
    boolq = readers.read_boolq(shared_data)[0]
    assert boolq["choices"] == ["no", "yes"] and boolq["question"].startswith("does ethanol")
    assert not boolq["passage"].startswith("Passage:")
    drop = readers.read_drop(shared_data)[1]
    assert drop["answers"] == ["Pakistanis and Filipinos", "Pakistani and Filipino"]
    assert drop["question"].startswith("What two nationalities")
    assert len({r["subject"] for r in readers.read_mmlu(shared_data)}) == 57
    assert readers.read_strategyqa(shared_data)[0]["answer"] is False
    assert "\r" not in readers.read_mbpp(shared_data, "all")[0]["code"]
    assert [len(readers.read_swebench_ids(shared_data, s)) for s in ("lite", "verified", "full")] == [300, 500, 2294]


def test_plain_text_readers(shared_data):
    valid, test = readers.read_wikitext(shared_data, "valid"), readers.read_wikitext(shared_data, "test")
    assert (len(valid), len(test)) == (60, 62)
    assert valid[0]["title"] == "Homarus gammarus" and valid[0]["text"].startswith("= Homarus gammarus =")
    assert sum(r["text"].count("\n") + 1 for r in valid) <= 3760
    pretrain = readers.read_pretrain_text(shared_data)
    by_source = {}
    for record in pretrain:
        by_source.setdefault(record["source"], []).append(record)
    assert len(by_source["state_union"]) == 65 and len(by_source["inaugural"]) == 59
    shakespeare = (shared_data / "pretrain_text" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    assert "\n\n".join(r["text"] for r in by_source["tinyshakespeare"]) == shakespeare.strip()


def test_reader_errors_name_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv(readers.DATA_DIR_ENV, raising=False)
    assert readers.default_data_dir() is None
    with pytest.raises(FileNotFoundError, match="FORGE_DATA_DIR"):
        readers.read_gsm8k()
    with pytest.raises(FileNotFoundError, match=r"gsm8k/test\.jsonl.*|FORGE_DATA_DIR"):
        readers.read_gsm8k(tmp_path)
    monkeypatch.setenv(readers.DATA_DIR_ENV, str(tmp_path / "nowhere"))
    assert readers.default_data_dir() == tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        readers.read_arc()
    with pytest.raises(ValueError, match="choose one of"):
        readers.read_gsm8k(tmp_path, split="validation")


# ---------------------------------------------------------------- partition

def test_partition_is_stable_disjoint_and_complete():
    items = [{"id": f"q{i}", "question": f"question {i}"} for i in range(2000)]
    train, heldout = splits.partition("toy", items)
    assert len(train) + len(heldout) == len(items)
    assert {i["id"] for i in train}.isdisjoint(i["id"] for i in heldout)
    assert 0.45 < len(heldout) / len(items) < 0.55
    shuffled = items[:]
    random.Random(1).shuffle(shuffled)
    assert {i["id"] for i in splits.partition("toy", shuffled)[1]} == {i["id"] for i in heldout}
    first_500 = {i["id"] for i in items[:500]}  # membership does not depend on the other items
    assert {i["id"] for i in splits.partition("toy", items[:500])[1]} == {i["id"] for i in heldout} & first_500
    assert splits.partition("other", items)[1] != heldout  # the dataset name salts the hash
    assert splits.partition("toy", items, heldout_fraction=0.0) == (items, [])
    assert splits.partition("toy", items, heldout_fraction=1.0) == ([], items)
    by_question = splits.partition("toy", items, key=lambda item: item["question"])
    assert len(by_question[0]) + len(by_question[1]) == len(items)
    with pytest.raises(ValueError, match="no 'missing' field"):
        splits.partition("toy", items, key="missing")
    with pytest.raises(ValueError, match="heldout_fraction"):
        splits.partition("toy", items, heldout_fraction=1.5)
    with pytest.raises(ValueError, match="is fixed"):
        splits.partition("arc_easy", items, key="id")


def test_partition_of_real_sets_keeps_shared_passages_together(shared_data):
    # Pinned counts: the partition must never change silently (benchmarks compare runs across it).
    expected_heldout = {"arc_easy": 1193, "drop": 4348, "strategyqa": 111, "wikitext": 61}
    for name in splits.SPLIT_PLANS:
        train, heldout = splits.train_items(name, shared_data), splits.heldout_items(name, shared_data)
        key = splits.PARTITION_KEYS.get(name, lambda item: item["id"])
        assert train and heldout
        assert {key(i) for i in train}.isdisjoint(key(i) for i in heldout), name
        if name in expected_heldout:
            assert len(heldout) == expected_heldout[name], name
    assert len(splits.train_items("gsm8k", shared_data)) == 7473  # a real train split is used as is
    assert len(splits.heldout_items("gsm8k", shared_data)) == 1319
    with pytest.raises(ValueError, match="no split plan"):
        splits.train_items("mmlu", shared_data)


# ---------------------------------------------------------------- offline sources

_EQUATION = re.compile(r"^([\d\s+\-*/]+) = (\d+)$")


def test_offline_math_is_deterministic_and_correct():
    texts = offline.generate_offline("arithmetic_word_problems", 300, seed=5)
    assert texts == offline.generate_offline("arithmetic_word_problems", 300, seed=5)
    assert texts != offline.generate_offline("arithmetic_word_problems", 300, seed=6)
    for text in texts:
        question, answer = text.split("\nAnswer: ")
        assert question.startswith("Question: ")
        *steps, final = answer.split("\n")
        for step in steps:
            match = _EQUATION.match(step)
            assert match, step
            assert eval(match.group(1), {"__builtins__": {}}) == int(match.group(2)), step  # noqa: S307
        assert final == f"#### {_EQUATION.match(steps[-1]).group(2)}"
        assert int(final[5:]) >= 0


def test_offline_text_sources_are_real_and_deterministic():
    code = offline.generate_offline("python_stdlib_code", 40, seed=1)
    assert code == offline.generate_offline("python_stdlib_code", 40, seed=1)
    assert len(code) == 40
    for snippet in code:
        function = ast.parse(snippet).body[0]
        assert isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)) and ast.get_docstring(function)
    docs = offline.generate_offline("python_stdlib_docstrings", 20, seed=1)
    assert len(docs) == 20 and all(len(doc) >= 200 for doc in docs)
    qa = offline.generate_offline("synthetic_qa", 200, seed=3)
    assert qa == offline.generate_offline("synthetic_qa", 200, seed=3)
    for text in qa:
        larger = re.match(r"Question: Which number is larger, (\d+) or (\d+)\?\nAnswer: (\d+)$", text)
        if larger:
            assert int(larger.group(3)) == max(int(larger.group(1)), int(larger.group(2)))
    assert offline.source_label("synthetic_qa") == "offline:synthetic_qa"
    with pytest.raises(ValueError, match="unknown offline generator"):
        offline.generate_offline("wikipedia", 3, seed=0)


# ---------------------------------------------------------------- sources

def test_dataset_with_no_source_raises_a_clear_error(monkeypatch):
    monkeypatch.delenv(readers.DATA_DIR_ENV, raising=False)
    config = sources.SourceConfig(order=("local", "offline"), max_items=5)
    with pytest.raises(sources.DatasetUnavailableError, match=r"PIQA.*FORGE_DATA_DIR"):
        sources.load_texts("piqa", config)
    skipped = sources.load_texts("piqa", sources.SourceConfig(order=("local", "offline"), allow_skip=True))
    assert skipped.skipped and skipped.texts == [] and len(skipped.attempts) == 2
    assert skipped.summary()["source"] is None
    with pytest.raises(ValueError, match="unknown curriculum dataset"):
        sources.load_texts("imagenet", config)
    with pytest.raises(ValueError, match="source order"):
        sources.SourceConfig(order=("cloud",))


def test_sources_fall_back_in_order_and_label_the_source(monkeypatch):
    monkeypatch.delenv(readers.DATA_DIR_ENV, raising=False)
    # conftest sets HF_DATASETS_OFFLINE=1, so the hub attempt fails fast and is recorded.
    loaded = sources.load_texts("gsm8k", sources.SourceConfig(order=("local", "hub", "offline"), max_items=7))
    assert loaded.source == "offline:arithmetic_word_problems" and len(loaded.texts) == 7
    assert [a.split(":")[0] for a in loaded.attempts] == ["local", "hub"]
    codexglue = sources.load_texts("codexglue", sources.SourceConfig(order=("local", "offline"), max_items=3))
    assert codexglue.source == "offline:python_stdlib_code"
    assert "no copy in the reference data folder" in codexglue.attempts[0]


def test_local_source_never_trains_on_heldout_items(shared_data):
    config = sources.SourceConfig(order=("local",), data_dir=str(shared_data))
    for name in ("arc_easy", "drop", "gsm8k", "mbpp"):
        loaded = sources.load_texts(name, config)
        assert loaded.source == f"local:{shared_data}"
        fmt = sources.get_source(name).format_text
        heldout_texts = {fmt(item) for item in splits.heldout_items(name, shared_data)}
        assert len(loaded.texts) == len(splits.train_items(name, shared_data))
        assert heldout_texts.isdisjoint(loaded.texts), name
    gsm = sources.load_texts("gsm8k", config).texts[0]
    assert gsm.startswith("Question: ") and "<<" not in gsm and "\n#### " in gsm
    sampled = sources.load_texts("hotpotqa", sources.SourceConfig(order=("local",), data_dir=str(shared_data),
                                                                   max_items=50, seed=2))
    assert len(sampled.texts) == 50
    assert sampled.texts == sources.load_texts("hotpotqa", sources.SourceConfig(
        order=("local",), data_dir=str(shared_data), max_items=50, seed=2)).texts


def test_hub_rows_map_to_the_reader_schema_without_heldout_items(shared_data):
    """The hub path's row mapping and decontamination, on rows in the hub datasets' own layout."""
    config = sources.SourceConfig(data_dir=str(shared_data), max_items=10)
    arc = sources.get_source("arc_easy")
    heldout = splits.heldout_items("arc_easy", shared_data)[0]
    rows = [{"question": "Which gas do plants take in?", "answerKey": "B",
             "choices": {"label": ["A", "B", "C"], "text": ["oxygen", "carbon dioxide", "helium"]}},
            {"question": heldout["question"], "answerKey": "A",
             "choices": {"label": ["A", "B"], "text": heldout["choices"][:2]}}]
    protected = sources._heldout_keys(arc, config)
    records, dropped = sources._hub_records(arc, config, rows, protected)
    assert dropped == 1 and len(records) == 1
    assert arc.format_text(records[0]) == "Question: Which gas do plants take in?\nAnswer: carbon dioxide"
    # ASDiv's hub split is the local evaluation set itself: only its train side may be used.
    asdiv = sources.get_source("asdiv")
    local = readers.read_asdiv(shared_data)[:40]
    hub_rows = [{"body": r["question"], "question": "", "answer": r["answer_text"], "formula": r["formula"]}
                for r in local]
    kept, _ = sources._hub_records(asdiv, sources.SourceConfig(max_items=40), hub_rows, set())
    train_questions = {r["question"] for r in splits.partition("asdiv", local)[0]}
    assert kept and {r["question"].strip() for r in kept} == train_questions
    wikitext = sources.get_source("wikitext")
    assert sources._hub_records(wikitext, config, [{"text": " \n"}, {"text": " = A = \n"}], set())[0] == [
        {"text": "= A ="}]


def test_registry_covers_the_spec_datasets():
    spec = {"GSM8K", "SVAMP", "ASDiv", "Mini-MBPP", "CodeXGLUE", "ARC-Easy", "ARC-Challenge", "HotpotQA",
            "DROP", "StrategyQA", "PIQA", "HellaSwag", "BoolQ", "WikiText", "FineWeb-Edu"}
    generated = {"Task world", "Task world (direct answers)"}  # generated problems, not datasets of the spec
    assert {s.display_name for s in sources.DATASETS.values()} == spec | generated
    for source in sources.DATASETS.values():
        assert source.category in sources.CATEGORIES
        assert source.offline is None or offline.GENERATORS[source.offline].category == source.category
        assert source.has_local == (source.name in splits.SPLIT_PLANS)


# ---------------------------------------------------------------- curriculum

def _offline_config(**changes):
    base = dict(chars_per_stage=20_000, seed=0,
                sources=sources.SourceConfig(order=("offline",), max_items=60, allow_skip=True))
    base.update(changes)
    return pretrain_stages.StageMixConfig(**base)


def test_curriculum_stage_mix_follows_weights_and_records_sources():
    config = _offline_config()
    loaded = {name: sources.load_texts(name, config.sources) for name in config.stages["reasoning"]}
    mix = pretrain_stages.build_stage("reasoning", config, loaded)
    # PIQA (commonsense) has no offline stand-in: recorded as a skip, its weight redistributed.
    draws = {draw.dataset: draw for draw in mix.draws}
    assert draws["piqa"].source is None and draws["piqa"].drawn == 0 and draws["piqa"].attempts
    assert mix.category_weights == pytest.approx({"qa": 0.3 / 0.4, "language": 0.1 / 0.4})
    assert draws["arc_easy"].source == "offline:synthetic_qa"
    assert draws["wikitext"].source == "offline:python_stdlib_docstrings"
    longest = max(len(text) for text in mix.texts)
    for name in ("arc_easy", "arc_challenge", "wikitext"):
        target = draws[name].weight * config.chars_per_stage
        assert target <= draws[name].drawn_chars < target + longest
    assert sum(draw.weight for draw in mix.draws) == pytest.approx(1.0)
    # Within a category, shares follow dataset size.
    easy, challenge = draws["arc_easy"], draws["arc_challenge"]
    assert easy.weight / challenge.weight == pytest.approx(easy.available_chars / challenge.available_chars)
    assert len(mix.texts) == sum(draw.drawn for draw in mix.draws)
    assert pretrain_stages.build_stage("reasoning", config).texts == mix.texts  # loads again: same mix
    assert pretrain_stages.build_stage("reasoning", _offline_config(seed=1), loaded).texts != mix.texts
    assert mix.summary()["datasets"][0]["dataset"] == "arc_easy"


def test_curriculum_on_real_data_uses_each_models_weights(shared_data):
    src = sources.SourceConfig(order=("local", "offline"), data_dir=str(shared_data), max_items=100)
    stages = pretrain_stages.build_stages(pretrain_stages.StageMixConfig(
        category_weights=pretrain_stages.COGNATE_MODEL_WEIGHTS[2], chars_per_stage=30_000, sources=src))
    assert [mix.stage for mix in stages] == ["foundation", "reasoning", "advanced"]
    foundation = stages[0]
    assert foundation.category_weights == pytest.approx({"math": 0.2 / 0.3, "code": 0.1 / 0.3})
    assert {d.source for d in foundation.draws} == {f"local:{shared_data}"}
    advanced = {d.dataset: d for d in stages[2].draws}
    assert advanced["fineweb_edu"].source == "offline:python_stdlib_docstrings"  # no local copy: labelled
    for weights in pretrain_stages.COGNATE_MODEL_WEIGHTS.values():
        assert sum(weights.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown categories"):
        pretrain_stages.StageMixConfig(category_weights={"vision": 1.0})
    with pytest.raises(ValueError, match="unknown curriculum dataset"):
        pretrain_stages.StageMixConfig(stages={"x": ("imagenet",)})


# ---------------------------------------------------------------- packing and the unigram baseline

def test_pack_token_ids_inserts_eos_and_drops_the_tail():
    blocks = lm_dataset.pack_token_ids([[1, 2, 3], [4, 5]], block_size=3, eos_id=0)
    assert blocks.tolist() == [[1, 2, 3], [0, 4, 5]]  # stream 1 2 3 0 4 5 0: the last 0 is dropped
    with pytest.raises(ValueError, match="block_size"):
        lm_dataset.pack_token_ids([[1]], block_size=1, eos_id=0)


def test_validation_split_is_by_document_with_no_overlap(gpt2):
    texts = [f"Document {i:04d} says hello number {i}." for i in range(300)]
    texts += texts[:50]  # repeated documents, as in a curriculum mix
    data = lm_dataset.build_lm_data(texts, gpt2, block_size=16, val_fraction=0.2, seed=0)
    assert data.train_documents + data.val_documents == len(texts)
    decode = lambda ds: gpt2.decode(torch.cat([ds[i]["input_ids"] for i in range(len(ds))]).tolist())
    train_ids = set(re.findall(r"Document (\d{4})", decode(data.train)))
    val_ids = set(re.findall(r"Document (\d{4})", decode(data.val)))
    assert train_ids and val_ids and train_ids.isdisjoint(val_ids)
    assert data.train_token_ids.count(gpt2.eos_token_id) == data.train_documents
    assert len(data.train) == len(data.train_token_ids) // 16
    item = data.train[0]
    assert torch.equal(item["input_ids"], item["labels"]) and item["input_ids"].dtype == torch.long
    # The blocks feed a causal LM as they are.
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, vocab_size=len(gpt2)))
    batch = torch.utils.data.default_collate([data.train[i] for i in range(4)])
    loss = model(**batch).loss
    assert math.isfinite(loss.item()) and loss.item() > 0
    with pytest.raises(ValueError, match="shorter than one block"):
        lm_dataset.build_lm_data(["hi"], gpt2, block_size=64, val_fraction=0.0)


def test_unigram_perplexity_matches_hand_computation():
    # counts {0: 2, 1: 1}, N = 3, V = 3: p(0) = 3/6, p(2) = 1/6 -> ppl = exp(-(ln 1/2 + ln 1/6) / 2) = sqrt(12)
    assert lm_dataset.unigram_perplexity([0, 0, 1], [0, 2], vocab_size=3) == pytest.approx(math.sqrt(12))
    # With no training data every token has probability 1/V.
    assert lm_dataset.unigram_perplexity([], [4, 1, 3], vocab_size=7) == pytest.approx(7.0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        lm_dataset.unigram_perplexity([0, 5], [0], vocab_size=3)
    with pytest.raises(ValueError, match="empty"):
        lm_dataset.unigram_perplexity([0], [], vocab_size=3)



def test_length_groups_split_a_mixed_batch_only_where_it_saves_padding():
    from forge.data.batching import MIN_SAVING, length_groups

    # Phase 5's mix: tool transcripts (~225 tokens) with level answers (~24): the short rows go apart.
    mixed = [225, 24, 230, 23, 212, 25, 225, 224]
    targets = [20, 4, 22, 3, 18, 5, 20, 19]
    groups = length_groups(mixed, targets)
    assert [group for group, _ in groups] == [[1, 3, 5], [0, 2, 4, 6, 7]]  # short rows, long rows, in batch order
    assert [share for _, share in groups] == pytest.approx([12 / 111, 99 / 111])  # each its share of the targets
    padded = len(mixed) * max(mixed)
    split = sum(len(g) * max(mixed[r] for r in g) for g, _ in groups)
    assert split <= (1 - MIN_SAVING) * padded
    assert length_groups([225] * 8, [1] * 8) == [(list(range(8)), 1.0)]  # one length: one group
    assert length_groups([24, 25, 23, 30], [1] * 4) == [([0, 1, 2, 3], 1.0)]  # saving under MIN_SAVING: one pass
    assert length_groups([100, 10], [3, 1]) == [([1], 0.25), ([0], 0.75)]
    for rows, weights in (([], []), ([100, 10], [1])):
        with pytest.raises(ValueError, match="one weight per row"):
            length_groups(rows, weights)
