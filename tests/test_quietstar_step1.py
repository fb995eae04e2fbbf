"""Quiet-STaR Step 1 (baking the reasoning format) and thought-hiding generation, on tiny models."""
import random

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.modeling_outputs import CausalLMOutput

from forge.data.tokenizer import load_gpt2_tokenizer, train_bpe_tokenizer
from forge.models import CognateConfig, CognateForCausalLM
from forge.optim import MuonGrokfastConfig
from forge.quietstar import STRATEGY_TOKENS, THINK_START, THINKING_TOKENS, add_thinking_tokens
from forge.quietstar.data import make_example
from forge.quietstar.format_training import (FormatBakeConfig, bake_reasoning_format, collate, encode_direct,
                                             encode_example, format_accuracy, select_examples, split_examples)
from forge.quietstar.generate import (answer_accuracy, generate, generation_speed, strip_thoughts, thinking_usage,
                                      visible_answer)
from forge.quietstar.offline import OfflineConfig, OfflineReasoningGenerator

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# ---------------------------------------------------------------- tiny data, tokenizer and models


def arithmetic_examples(n: int, seed: int = 0):
    """Short hand-made examples in the baking format: a sum, checked by subtraction, some with extra moves."""
    rng = random.Random(seed)
    examples = []
    for index in range(n):
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        moves = [("<step>", f"{a} + {b} = {a + b}")]
        if index % 3 == 0:
            moves.append(("<doubt>", f"is {a + b} too big?"))
        moves.append(("<correct>", f"{a + b} - {b} = {a}, so {a + b} holds"))
        examples.append(make_example(id=f"sum/{index}", question=f"What is {a} plus {b}?", moves=moves,
                                     answer=str(a + b), source="hand", generator="test"))
    return examples


def tiny_tokenizer(examples):
    return train_bpe_tokenizer([example.text() for example in examples], vocab_size=300, min_frequency=1)


def tiny_llama(tokenizer) -> LlamaForCausalLM:
    """A 2-layer hidden-32 Llama with the 12 thinking tokens added to it and (idempotently) to ``tokenizer``."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2,
                                         vocab_size=tokenizer.vocab_size, tie_word_embeddings=False))
    add_thinking_tokens(model, tokenizer)
    return model


def tiny_cognate(tokenizer) -> CognateForCausalLM:
    torch.manual_seed(0)
    model = CognateForCausalLM(CognateConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, sliding_window=8, ltm_slots=16, memory_dim=8, memory_chunk_size=4, act_max_steps=2))
    add_thinking_tokens(model, tokenizer)
    return model


def fast_config(**overrides) -> FormatBakeConfig:
    """Spec structure, but a learning rate a tiny model moves with in a few epochs."""
    settings = dict(epochs=3, batch_size=8, seq_len=64, accuracy_threshold=0.0,
                    optimizer=MuonGrokfastConfig(muon_lr=1e-2, adam_lr=1e-2, grokfast_lambda=0.2,
                                                 qk_clip_threshold=30.0))
    settings.update(overrides)
    return FormatBakeConfig(**settings)


@pytest.fixture()
def data():
    examples = arithmetic_examples(44)
    tokenizer = tiny_tokenizer(examples)
    train, val = split_examples(examples, 0.25, seed=0)  # 11 held out: every strategy used shows up
    return tokenizer, train, val


class LookAheadLM(nn.Module):
    """A stand-in 'model' whose logits at position t put all mass on the true token t+1 (it reads ahead),
    except inside the ``wrong`` spans, where it predicts ``wrong_token``."""

    def __init__(self, vocab: int, wrong: set[tuple[int, int]] = frozenset(), wrong_token: int = 0):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.vocab, self.wrong, self.wrong_token = vocab, wrong, wrong_token

    def forward(self, input_ids, attention_mask=None, **kwargs):
        nxt = torch.roll(input_ids, -1, dims=1)
        for row, position in self.wrong:
            nxt[row, position] = self.wrong_token
        return CausalLMOutput(logits=nn.functional.one_hot(nxt, self.vocab).float() + 0 * self.anchor)


class ScriptedLM(nn.Module):
    """Emits ``script`` after a prompt of ``prompt_len`` tokens, then end-of-text, whatever the input."""

    def __init__(self, vocab: int, script: list[int], prompt_len: int, eos: int):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.vocab, self.script, self.prompt_len, self.eos = vocab, script, prompt_len, eos

    def forward(self, input_ids, **kwargs):
        steps = [self.script[t + 1 - self.prompt_len] if 0 <= t + 1 - self.prompt_len < len(self.script) else self.eos
                 for t in range(input_ids.shape[1])]
        logits = nn.functional.one_hot(torch.tensor(steps), self.vocab).float()
        return CausalLMOutput(logits=logits.expand(input_ids.shape[0], -1, -1) + 0 * self.anchor)


# ---------------------------------------------------------------- split and encoding


def test_split_is_disjoint_complete_and_independent_of_order():
    examples = arithmetic_examples(50)
    train, val = split_examples(examples, 0.1, seed=0)
    assert len(val) == 5 and len(train) == 45
    assert {e.id for e in train}.isdisjoint({e.id for e in val})
    assert {e.id for e in train} | {e.id for e in val} == {e.id for e in examples}
    shuffled = examples[:]
    random.Random(1).shuffle(shuffled)
    assert {e.id for e in split_examples(shuffled, 0.1, seed=0)[1]} == {e.id for e in val}
    assert {e.id for e in split_examples(examples, 0.1, seed=1)[1]} != {e.id for e in val}
    capped_train, capped_val = select_examples(examples, FormatBakeConfig(max_examples=20))
    assert len(capped_train) + len(capped_val) == 20
    with pytest.raises(ValueError, match="unique"):
        split_examples(examples + examples[:1], 0.1, seed=0)


def test_encoding_masks_the_question_and_maps_strategy_lines(shared_data):
    tokenizer = load_gpt2_tokenizer()
    tokenizer.add_special_tokens({"extra_special_tokens": list(THINKING_TOKENS)})
    examples = list(OfflineReasoningGenerator(OfflineConfig(data_dir=str(shared_data))).generate(12))
    assert len(examples) == 12
    for example in examples:
        item = encode_example(tokenizer, example, seq_len=4096)
        assert not item.truncated
        target_ids = [i for i, is_target in zip(item.input_ids, item.target) if is_target]
        assert tokenizer.decode(target_ids) == f"{example.thinking}\nAnswer: {example.answer}<|endoftext|>"
        for index, strategy in enumerate(STRATEGY_TOKENS):
            ids = [i for i, s in zip(item.input_ids, item.strategy) if s == index]
            assert bool(ids) == (strategy in example.strategies)
            if ids:  # each strategy's tokens are its lines: they start with the strategy token
                lines = tokenizer.decode(ids).replace(strategy, "\n" + strategy).split("\n")
                assert all(line.startswith(strategy) for line in lines if line.strip())
        short = encode_example(tokenizer, example, seq_len=16)
        assert short.truncated and len(short.input_ids) == 16


# ---------------------------------------------------------------- format accuracy


def test_format_accuracy_is_one_for_a_perfect_predictor_and_drops_on_the_wrong_lines(data):
    tokenizer, _, val = data
    tiny_llama(tokenizer)  # adds the thinking tokens to the tokenizer
    vocab = len(tokenizer)
    perfect = format_accuracy(LookAheadLM(vocab), tokenizer, val, seq_len=64, batch_size=2)
    expected_tokens = sum(sum(encode_example(tokenizer, e, 64).target[1:]) for e in val)
    assert perfect["accuracy"] == 1.0 and perfect["tokens"] == expected_tokens
    assert set(perfect["per_strategy"]) == set(STRATEGY_TOKENS)
    assert perfect["per_strategy"]["<step>"] == 1.0 and perfect["per_strategy"]["<correct>"] == 1.0
    assert perfect["per_strategy"]["<bayesian>"] is None  # no such line in the data

    # Wrong on every token of the <step> lines (positions t predict token t+1), right elsewhere.
    step_index = STRATEGY_TOKENS.index("<step>")
    wrong, step_tokens = set(), 0
    for offset in range(0, len(val), 2):
        for row, example in enumerate(val[offset:offset + 2]):
            item = encode_example(tokenizer, example, 64)
            for position, strategy in enumerate(item.strategy):
                if strategy == step_index and position > 0:
                    wrong.add((offset // 2, row, position - 1))
                    step_tokens += 1
    batches = {}
    for batch, row, position in wrong:
        batches.setdefault(batch, set()).add((row, position))

    class WrongOnSteps(LookAheadLM):
        calls = 0

        def forward(self, input_ids, attention_mask=None, **kwargs):
            self.wrong = batches.get(WrongOnSteps.calls, set())
            WrongOnSteps.calls += 1
            return super().forward(input_ids, attention_mask)

    wrong_token = tokenizer.convert_tokens_to_ids("<uncertain>")
    scored = format_accuracy(WrongOnSteps(vocab, wrong_token=wrong_token), tokenizer, val, seq_len=64, batch_size=2)
    assert scored["per_strategy"]["<step>"] == 0.0
    assert scored["per_strategy"]["<correct>"] == 1.0
    assert scored["accuracy"] == pytest.approx(1 - step_tokens / expected_tokens)


@pytest.mark.parametrize("build", [tiny_llama, tiny_cognate], ids=["llama", "cognate"])
def test_format_accuracy_does_not_depend_on_padding(build, data):
    tokenizer, _, val = data
    model, val = build(tokenizer), val[:4]
    alone = format_accuracy(model, tokenizer, val, seq_len=64, batch_size=1)
    padded = format_accuracy(model, tokenizer, val, seq_len=64, batch_size=4)
    assert alone["tokens"] == padded["tokens"]
    assert padded["accuracy"] == pytest.approx(alone["accuracy"], abs=1e-9)


# ---------------------------------------------------------------- baking


def test_baking_lowers_the_loss_raises_accuracy_and_logs_the_spec_names(data):
    tokenizer, train, val = data
    model = tiny_llama(tokenizer)
    records = []
    report = bake_reasoning_format(model, tokenizer, train, val, fast_config(), log=records.append)
    losses = [entry["loss"] for entry in report.history]
    assert losses[-1] < losses[0]
    assert report.final_accuracy > report.initial_accuracy + 0.2, report.to_dict()
    assert report.epochs_run == 3 and not report.mitigated and report.converged
    assert report.accuracy_after_mitigation is None and report.accuracy_before_mitigation == report.final_accuracy
    assert report.train_examples == len(train) and report.val_examples == len(val)
    assert [r["baking/epoch"] for r in records] == [1, 2, 3]
    assert {"baking/loss", "baking/val_accuracy", "baking/accuracy_step", "baking/accuracy_correct",
            "baking/accuracy_doubt"} <= set(records[-1])
    assert "baking/accuracy_bayesian" not in records[-1]
    assert records[-1]["baking/val_accuracy"] == report.final_accuracy
    assert report.to_dict()["final_per_strategy"]["<step>"] == report.final_per_strategy["<step>"]


def test_cognate_bakes_and_learns(data):
    tokenizer, train, val = data
    model = tiny_cognate(tokenizer)
    report = bake_reasoning_format(model, tokenizer, train[:16], val[:4], fast_config(epochs=2, batch_size=4))
    assert report.history[-1]["loss"] < report.history[0]["loss"]
    assert report.final_accuracy > report.initial_accuracy


def test_missed_threshold_runs_the_mitigation_once_and_reports_it(data):
    tokenizer, train, val = data
    model = tiny_llama(tokenizer)
    report = bake_reasoning_format(model, tokenizer, train, val,
                                   fast_config(epochs=1, mitigation_epochs=2, accuracy_threshold=1.01))
    assert report.mitigated and not report.converged and report.epochs_run == 3
    assert [entry["stage"] for entry in report.history] == ["main", "mitigation", "mitigation"]
    assert [entry["lr_factor"] for entry in report.history] == [1.0, 0.5, 0.5]
    assert report.accuracy_before_mitigation == report.history[0]["val_accuracy"]
    assert report.accuracy_after_mitigation == report.final_accuracy == report.history[-1]["val_accuracy"]


def test_resumed_bake_equals_an_uninterrupted_one(data, tmp_path):
    tokenizer, train, val = data
    straight_model = tiny_llama(tokenizer)
    straight = bake_reasoning_format(straight_model, tokenizer, train, val, fast_config(epochs=2))

    resumed_model = tiny_llama(tokenizer)
    first = bake_reasoning_format(resumed_model, tokenizer, train, val, fast_config(epochs=1), checkpoint_dir=tmp_path)
    assert first.epochs_run == 1 and (tmp_path / "format_bake.pt").is_file()
    fresh_model = tiny_llama(tokenizer)  # a new process: the weights come from the checkpoint
    second = bake_reasoning_format(fresh_model, tokenizer, train, val, fast_config(epochs=2), checkpoint_dir=tmp_path)
    assert second.resumed_from_epoch == 1 and second.epochs_run == 2
    assert [e["loss"] for e in second.history] == [e["loss"] for e in straight.history]
    assert second.final_accuracy == straight.final_accuracy
    expected = straight_model.state_dict()
    for name, tensor in fresh_model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name

    with pytest.raises(ValueError, match="other examples or settings"):
        bake_reasoning_format(tiny_llama(tokenizer), tokenizer, train[1:], val, fast_config(epochs=2),
                              checkpoint_dir=tmp_path)


def plain_texts(n: int, seed: int) -> list[str]:
    """Pretraining-like sentences (no Question/Answer format) for replay and for held-out perplexity."""
    rng = random.Random(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "red", "house", "big", "tree"]
    return [" ".join(rng.choice(words) for _ in range(24)) + "." for _ in range(n)]


def lm_loss(model, tokenizer, texts) -> float:
    ids = torch.tensor([tokenizer(" ".join(texts), add_special_tokens=False)["input_ids"][:512]])
    with torch.no_grad():
        return model(input_ids=ids, labels=ids).loss.item()


def test_replay_keeps_the_text_modelling_that_format_training_alone_destroys(data):
    tokenizer, train, val = data
    texts = plain_texts(80, seed=1)
    tokenizer = train_bpe_tokenizer([e.text() for e in train + val] + texts, vocab_size=300, min_frequency=1)
    replay, heldout = texts[:60], texts[60:]
    base = tiny_llama(tokenizer)
    pretrain = fast_config(epochs=4, replay_sequences=8)  # a "pretrained" start: replay only would be simpler,
    bake_reasoning_format(base, tokenizer, train, val, pretrain, replay_texts=replay)  # but this is the real path
    start = lm_loss(base, tokenizer, heldout)
    results = {}
    for sequences in (0, 8):
        model = tiny_llama(tokenizer)
        model.load_state_dict(base.state_dict())
        config = fast_config(epochs=3, replay_sequences=sequences, seq_len=32,
                             optimizer=MuonGrokfastConfig(muon_lr=3e-2, adam_lr=3e-2, grokfast_lambda=0.2,
                                                          qk_clip_threshold=30.0))
        report = bake_reasoning_format(model, tokenizer, train, val, config,
                                       replay_texts=replay if sequences else None)
        results[sequences] = (lm_loss(model, tokenizer, heldout), report)
    (without, plain), (with_replay, replayed) = results[0], results[8]
    assert plain.replay_tokens == 0 and all(e["replay_loss"] is None for e in plain.history)
    assert replayed.replay_tokens > 0 and all(e["replay_loss"] is not None for e in replayed.history)
    assert with_replay < without, (start, with_replay, without)
    # format training alone wrecks the text (measured: loss 2.85 -> 4.12 with the digit-splitting BPE, 2.84 -> 8.9
    # before it); with replay the loss moves by a fifth of that or less (0.26 of 1.27 nats, 0.2 of 6.1)
    assert with_replay - start < 0.5 * (without - start), (start, with_replay, without)


def test_replay_needs_texts_and_is_part_of_the_checkpoint_fingerprint(data, tmp_path):
    tokenizer, train, val = data
    with pytest.raises(ValueError, match="needs replay_texts"):
        bake_reasoning_format(tiny_llama(tokenizer), tokenizer, train, val, fast_config(replay_sequences=2))
    texts = plain_texts(40, seed=2)
    bake_reasoning_format(tiny_llama(tokenizer), tokenizer, train, val, fast_config(epochs=1, replay_sequences=2),
                          replay_texts=texts, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="other examples or settings"):
        bake_reasoning_format(tiny_llama(tokenizer), tokenizer, train, val, fast_config(epochs=2, replay_sequences=2),
                              replay_texts=texts[1:], checkpoint_dir=tmp_path)


def direct_sums(n: int, seed: int) -> list[tuple[str, str]]:
    """Direct-answer pairs in the examples' wording: the prompt, then the answer line."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        pairs.append((f"Question: What is {a} plus {b}?\n", f"Answer: {a + b}\n"))
    return pairs


def direct_loss(model, tokenizer, pairs) -> float:
    """Mean next-token cross-entropy of the answer lines (and end-of-text) after their prompts."""
    batch = collate([encode_direct(tokenizer, prompt, target, 64) for prompt, target in pairs], tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(),
                                       ignore_index=-100).item()


def test_direct_pairs_score_the_answer_line_only(data):
    tokenizer, _, _ = data
    item = encode_direct(tokenizer, "Question: What is 3 plus 4?\n", "Answer: 7\n", seq_len=64)
    scored = [i for i, is_target in zip(item.input_ids, item.target) if is_target]
    assert tokenizer.decode(item.input_ids[:len(item.input_ids) - len(scored)]) == "Question: What is 3 plus 4?\n"
    assert tokenizer.decode(scored) == "Answer: 7\n" + tokenizer.eos_token
    assert not item.truncated and set(item.strategy) == {-1}
    short = encode_direct(tokenizer, "Question: What is 3 plus 4?\n", "Answer: 7\n", seq_len=8)
    assert short.truncated and len(short.input_ids) == len(short.target) == len(short.strategy) == 8


def test_direct_pairs_keep_the_direct_answer_that_the_traces_alone_unlearn(data, tmp_path):
    tokenizer, train, val = data
    pairs, heldout = direct_sums(40, seed=5), direct_sums(12, seed=6)
    losses, reports = {}, {}
    for mixed in (False, True):
        model = tiny_llama(tokenizer)
        reports[mixed] = bake_reasoning_format(model, tokenizer, train, val, fast_config(epochs=4),
                                               direct=pairs if mixed else ())
        losses[mixed] = direct_loss(model, tokenizer, heldout)
    assert reports[False].direct_examples == 0 and reports[True].direct_examples == 40
    # Trained on traces alone the model opens a thinking block where the answer line should be; with the pairs
    # it writes the line (measured: 2.36 nats without, 1.02 with), and the thinking format is learned all the same.
    assert losses[True] < 0.6 * losses[False], losses
    assert reports[True].final_accuracy > reports[True].initial_accuracy + 0.2, reports[True].to_dict()
    bake_reasoning_format(tiny_llama(tokenizer), tokenizer, train, val, fast_config(epochs=1), direct=pairs,
                          checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="other examples or settings"):
        bake_reasoning_format(tiny_llama(tokenizer), tokenizer, train, val, fast_config(epochs=2), direct=pairs[1:],
                              checkpoint_dir=tmp_path)


def test_bake_refuses_a_tokenizer_without_thinking_tokens(data):
    tokenizer, train, val = data
    plain = tiny_tokenizer(train)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, vocab_size=len(plain)))
    with pytest.raises(ValueError, match="add_thinking_tokens"):
        bake_reasoning_format(model, plain, train, val, fast_config())


# ---------------------------------------------------------------- thought hiding


@pytest.mark.parametrize("text, visible", [
    ("no block here", "no block here"),
    ("[thinking]\n<step> 2 + 2 = 4\n[/endthinking]\nAnswer: 4", "Answer: 4"),
    ("a [thinking] x [thinking] y [/endthinking] z [/endthinking] b", "a b"),  # nested: one block
    ("a [thinking] x [/endthinking] b [thinking] y [/endthinking] c", "a b c"),
    ("Answer: 4 [thinking]\n<doubt> is it", "Answer: 4 "),  # unclosed trailing block
    ("stray [/endthinking] end", "stray end"),
])
def test_strip_thoughts(text, visible):
    assert strip_thoughts(text) == visible


def biased_llama(tokenizer, favourite: str, runner_up: str) -> LlamaForCausalLM:
    """A tiny Llama whose output head always ranks ``favourite`` first and ``runner_up`` second."""
    model = tiny_llama(tokenizer)
    head = nn.Linear(32, len(tokenizer), bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[tokenizer.convert_tokens_to_ids(favourite)] = 10.0
        head.bias[tokenizer.convert_tokens_to_ids(runner_up)] = 5.0
    model.lm_head = head
    return model.eval()


def test_dominant_thinking_token_is_emitted_hidden_and_forbidden(data):
    tokenizer, _, _ = data
    model = biased_llama(tokenizer, THINK_START, "7")
    prompts = ["Question: What is 3 plus 4?\n", "Question: hi\n"]
    thinking = generate(model, tokenizer, prompts, max_new_tokens=5)
    for output in thinking:
        assert output.used_thinking and output.generated_tokens == 5 and output.thought_tokens == 5
        assert output.full_text == THINK_START * 5
        assert output.visible_text == ""
    shown = generate(model, tokenizer, prompts, max_new_tokens=3, hide_thoughts=False)
    assert shown[0].visible_text == shown[0].full_text == THINK_START * 3
    assert thinking_usage(thinking) == 1.0

    forbidden = generate(model, tokenizer, prompts, max_new_tokens=5, allow_thinking=False)
    for output in forbidden:
        assert not output.used_thinking and output.thought_tokens == 0 and output.generated_tokens == 5
        assert output.full_text == "7" * 5 and not any(token in output.full_text for token in THINKING_TOKENS)
    assert thinking_usage(forbidden) == 0.0

    sampled = generate(model, tokenizer, prompts, max_new_tokens=8, allow_thinking=False, temperature=5.0, seed=3)
    assert all(not any(t in o.full_text for t in THINKING_TOKENS) for o in sampled)

    speed = generation_speed(model, tokenizer, prompts, max_new_tokens=4)
    assert speed["tokens_per_s_thinking"] > 0 and speed["tokens_per_s_no_thinking"] > 0
    assert speed["thinking_usage_thinking"] == 1.0 and speed["thinking_usage_no_thinking"] == 0.0
    assert speed["speed_ratio"] == pytest.approx(speed["tokens_per_s_thinking"] / speed["tokens_per_s_no_thinking"])


def test_generation_before_the_thinking_tokens_exist(data):
    tokenizer, train, _ = data
    plain = tiny_tokenizer(train)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, vocab_size=len(plain)))
    outputs = generate(model, plain, ["Question: hi\n"], max_new_tokens=3, allow_thinking=False)
    assert outputs[0].generated_tokens == 3 and not outputs[0].used_thinking and outputs[0].thought_tokens == 0
    plain.add_special_tokens({"extra_special_tokens": [THINK_START]})  # a partial set is a mistake
    with pytest.raises(ValueError, match="add_thinking_tokens"):
        generate(model, plain, ["Question: hi\n"], max_new_tokens=3)


def test_answer_accuracy_reads_the_visible_answer_only(data):
    tokenizer, _, _ = data
    tiny_llama(tokenizer)  # adds the thinking tokens to the tokenizer
    question = "What is 2 plus 2?"
    prompt_len = len(tokenizer(f"Question: {question}\n", add_special_tokens=False)["input_ids"])
    script = tokenizer("[thinking]\n<step> Answer: 5\n[/endthinking]\nAnswer: 4.0\nQuestion: more",
                       add_special_tokens=False)["input_ids"]
    model = ScriptedLM(len(tokenizer), script, prompt_len, tokenizer.eos_token_id)
    result = answer_accuracy(model, tokenizer, [(question, "4"), (question, "5")], max_new_tokens=60)
    assert result["n"] == 2 and result["accuracy"] == 0.5 and result["thinking_usage"] == 1.0
    assert [item["answer"] for item in result["items"]] == ["4.0", "4.0"]
    assert [item["correct"] for item in result["items"]] == [True, False]
    stop_at = len(tokenizer("[thinking]\n<step> Answer: 5\n[/endthinking]\nAnswer: 4.0\n",
                            add_special_tokens=False)["input_ids"])
    assert result["items"][0]["generated_tokens"] == stop_at  # stopped once the answer line was complete
    assert visible_answer("42\nmore") == "42"
