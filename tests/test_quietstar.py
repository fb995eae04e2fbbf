"""Quiet-STaR techniques: thinking tokens, reasoning data (offline and API), rewards, anti-theater checks."""
import json
import math
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from forge.artifacts import load_model_dir, save_model_dir, state_dict_hash
from forge.data.readers import read_gsm8k
from forge.data.splits import heldout_items
from forge.data.tokenizer import load_gpt2_tokenizer
from forge.models import CognateConfig, CognateForCausalLM
from forge.quietstar import (STRATEGY_TOKENS, THINKING_TOKENS, AntiTheaterReport, MixingHead, ReasoningExample,
                             ablation_drop, add_thinking_tokens, coherence_utility_correlation, read_dataset,
                             reinforce_loss, sequence_logprob, thinking_token_ids, thought_divergence,
                             thought_rewards, validate_examples, write_dataset)
from forge.quietstar.api import (ApiError, ApiGeneratorConfig, ApiReasoningGenerator, CostCapReached, SeedQuestion,
                                 request_messages, worst_case_usd)
from forge.quietstar.data import make_example
from forge.quietstar.tokens import strategies_in
from forge.data.arithmetic import CalculatorError, NotArithmeticError, evaluate
from forge.quietstar.offline import OfflineConfig, OfflineReasoningGenerator, Rejected, gsm8k_example, show, svamp_example

# ---------------------------------------------------------------- tokens


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    return load_gpt2_tokenizer()


def tiny_cognate(vocab: int) -> CognateForCausalLM:
    torch.manual_seed(0)
    return CognateForCausalLM(CognateConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        sliding_window=8, ltm_slots=16, memory_dim=8, memory_chunk_size=4, act_max_steps=2)).eval()


def tiny_llama(vocab: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2, vocab_size=vocab,
                                        tie_word_embeddings=False)).eval()


def tiny_gpt2(vocab: int) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=vocab)).eval()


def _piece_direction(matrix: torch.Tensor, tokenizer, word: str) -> torch.Tensor:
    ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
    return matrix[ids].mean(dim=0)


@pytest.mark.parametrize("build", [tiny_cognate, tiny_llama, tiny_gpt2], ids=["cognate", "llama-untied", "gpt2"])
def test_thinking_tokens_added_initialised_and_survive_a_round_trip(build, tmp_path):
    tokenizer = load_gpt2_tokenizer()
    model = build(len(tokenizer))
    old_input = model.get_input_embeddings().weight.detach().clone()
    old_output = model.get_output_embeddings().weight.detach().clone()
    ids = add_thinking_tokens(model, tokenizer)

    assert list(ids) == list(THINKING_TOKENS)
    assert sorted(ids.values()) == list(range(50257, 50269)) and len(tokenizer) == 50269
    assert model.config.vocab_size == 50269
    for token in THINKING_TOKENS:  # each is one unsplittable token, even inside text
        assert tokenizer(f"x{token}y", add_special_tokens=False)["input_ids"].count(ids[token]) == 1
    new_input = model.get_input_embeddings().weight.detach()
    assert torch.equal(new_input[:50257], old_input)  # existing rows untouched
    norms = old_input.norm(dim=-1)
    new_norms = new_input[50257:].norm(dim=-1)
    assert bool(((new_norms >= norms.min()) & (new_norms <= norms.max())).all()), (new_norms, norms.min(), norms.max())
    # "<doubt>" points where its word piece " doubt" points.
    cosine = torch.cosine_similarity(new_input[ids["<doubt>"]], _piece_direction(old_input, tokenizer, "doubt"), dim=0)
    assert cosine > 0.999
    tied = model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert tied == (build is not tiny_llama)
    if not tied:  # the untied head's rows come from the head's own rows of the same pieces
        head = model.get_output_embeddings().weight.detach()
        assert head.shape[0] == 50269
        cosine = torch.cosine_similarity(head[ids["<step>"]], _piece_direction(old_output, tokenizer, "step"), dim=0)
        assert cosine > 0.999

    before = state_dict_hash(model.state_dict())
    assert add_thinking_tokens(model, tokenizer) == ids  # idempotent: same ids, no change to the weights
    assert state_dict_hash(model.state_dict()) == before and len(tokenizer) == 50269

    save_model_dir(model, tokenizer, tmp_path / "with-tokens", phase="quietstar")
    loaded, loaded_tokenizer = load_model_dir(tmp_path / "with-tokens")
    assert thinking_token_ids(loaded_tokenizer) == ids
    assert torch.equal(loaded.get_input_embeddings().weight, model.get_input_embeddings().weight)
    assert torch.equal(loaded.get_output_embeddings().weight, model.get_output_embeddings().weight)
    text = "[thinking]\n<step> 3 + 4 = 7\n<doubt> check\n[/endthinking]"
    inputs = torch.tensor([loaded_tokenizer(text, add_special_tokens=False)["input_ids"]])
    assert inputs.max().item() >= 50257
    with torch.no_grad():
        assert torch.allclose(loaded(inputs).logits, model(inputs).logits, atol=1e-5)


def test_thinking_token_ids_names_the_fix_when_missing(gpt2_tokenizer):
    with pytest.raises(ValueError, match="add_thinking_tokens"):
        thinking_token_ids(gpt2_tokenizer)


# ---------------------------------------------------------------- offline data


def test_offline_traces_come_from_the_train_side_and_pass_validation(shared_data):
    generator = OfflineReasoningGenerator(OfflineConfig(data_dir=str(shared_data)))
    examples = list(generator.generate(60))
    assert len(examples) == 60
    report = validate_examples(examples, min_examples=60)
    assert report.passed, report.failures()
    assert all(count > 0 for count in report.strategy_counts.values())
    assert all(example.generator.startswith("offline:") for example in examples)
    assert {example.source for example in examples} == {"gsm8k", "svamp", "mbpp", "arc_easy", "arc_challenge",
                                                        "strategyqa"}
    for source in ("svamp", "arc_easy", "strategyqa"):  # hash-partitioned sets: never a held-out question
        heldout = {item["question"] for item in heldout_items(source, shared_data)}
        assert not heldout & {example.question for example in examples if example.source == source}
    for example in examples:
        if example.source == "gsm8k":
            assert example.id.startswith("gsm8k/train-")
            for expression, value in re.findall(r"<correct> Recomputed: (.+?) = (\S+), as stated", example.thinking):
                assert math.isclose(evaluate(expression), float(value), rel_tol=1e-6)
        if example.source == "mbpp":
            assert int(example.id.split("/")[1]) >= 601  # MBPP's train task ids


def test_gsm8k_trace_of_a_known_problem(shared_data):
    example = gsm8k_example(read_gsm8k(shared_data, "train")[0])
    assert example.thinking == (
        "[thinking]\n"
        "<step> Natalia sold 48/2 = 24 clips in May.\n"
        "<step> Natalia sold 48+24 = 72 clips altogether in April and May.\n"
        "<doubt> Re-check the last calculation 48+24.\n"
        "<correct> Recomputed: 48+24 = 72, as stated.\n"
        "[/endthinking]")
    assert example.answer == "72" and example.strategies == ("<step>", "<doubt>", "<correct>")


def test_rules_reject_what_does_not_hold_and_check_by_inverse():
    wrong = {"id": "x", "question": "q", "answer": "Two sets: 2*3 = <<2*3=7>>7\n#### 7", "final_answer": "7"}
    with pytest.raises(Rejected, match="does not hold"):
        gsm8k_example(wrong)
    svamp = {"id": "s1", "question": "Dan had $ 3 left after paying $ 2 for 4 hours. How much at the start?",
             "equation": "( ( 3.0 + 2.0 ) * 4.0 )", "final_answer": "20", "type": "x"}
    example = svamp_example(svamp)
    assert example.thinking.splitlines()[1:4] == [
        "<step> 3 + 2 = 5", "<step> 5 * 4 = 20",
        "<orthogonal> Check by the inverse operation: 20 / 4 = 5, the starting quantity."]
    assert "<multidomain> The problem combines money and time quantities." in example.thinking
    with pytest.raises(Rejected, match="answer key"):
        svamp_example({**svamp, "final_answer": "21"})
    assert show(evaluate("0.1 + 0.2")) == "0.3" and evaluate("3*+6") == 18
    with pytest.raises(CalculatorError):
        evaluate("9**9**9")  # would run for ever
    with pytest.raises(NotArithmeticError):
        evaluate("__import__('os')")


def _example(key: str, moves, thinking: str | None = None) -> ReasoningExample:
    example = make_example(id=key, question="q", moves=moves, answer="a", source="test", generator="offline:test")
    if thinking is None:
        return example
    return ReasoningExample(id=key, question="q", thinking=thinking, answer="a",
                            strategies=tuple(strategies_in(thinking)), source="test", generator="offline:test")


def test_validation_reports_which_check_fails_and_why():
    every = [_example(f"e{i}", [(token, "x")]) for i, token in enumerate(STRATEGY_TOKENS)]
    assert validate_examples(every, min_examples=10).passed
    report = validate_examples(every, min_examples=11)
    assert [check.name for check in report.failures()] == ["enough_examples"]
    assert "10 examples, need at least 11" in report.failures()[0].detail
    report = validate_examples(every[:-1], min_examples=1)
    assert [check.name for check in report.failures()] == ["all_strategies"]
    assert "<uncertain>" in report.failures()[0].detail
    no_strategy = _example("bad", [], thinking="[thinking]\njust words\n[/endthinking]")
    unclosed = _example("open", [], thinking="[thinking]\n<step> x")
    report = validate_examples([*every, no_strategy, unclosed], min_examples=1)
    failed = {check.name: check.detail for check in report.failures()}
    assert set(failed) == {"well_formed_thinking"}
    assert "bad has no strategy token inside" in failed["well_formed_thinking"]
    assert "open does not end with [/endthinking]" in failed["well_formed_thinking"]
    with pytest.raises(ValueError, match="unique_ids"):
        validate_examples([*every, every[0]], min_examples=1).raise_if_failed()


def test_dataset_file_round_trip_and_tamper_detection(tmp_path):
    examples = [_example(f"e{i}", [(token, f"line {i}")]) for i, token in enumerate(STRATEGY_TOKENS)]
    path = write_dataset(examples, tmp_path / "reasoning.jsonl")
    loaded, metadata = read_dataset(path)
    assert loaded == examples
    assert metadata["total_examples"] == 10 and len(metadata["strategies"]) == 10
    assert metadata["special_tokens"] == list(THINKING_TOKENS)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(examples[0].to_dict()) + "\n")
    with pytest.raises(ValueError, match="holds 11 examples"):
        read_dataset(path)


# ---------------------------------------------------------------- API generator


class ChatService(BaseHTTPRequestHandler):
    """A local stand-in for the external chat-completions service."""

    log: list[str] = []  # user messages of answered requests
    fail_first = 1  # how many requests get an HTTP 500 first

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.headers["Authorization"] != "Bearer sk-test":
            return self._send(401, {"error": {"message": "invalid api key"}})
        if ChatService.fail_first > 0:
            ChatService.fail_first -= 1
            return self._send(500, {"error": {"message": "overloaded"}})
        user = body["messages"][-1]["content"]
        ChatService.log.append(user)
        reference = re.search(r"Reference answer: (.*)", user).group(1)
        if "odd" in user:  # a reply with another answer, to be rejected
            reference = "999"
        if "mute" in user:  # a reply with no thinking block, to be rejected
            content = f"Answer: {reference}"
        else:
            content = f"[thinking]\n<step> think about it\n<doubt> sure?\n[/endthinking]\nAnswer: {reference}"
        self._send(200, {"choices": [{"message": {"role": "assistant", "content": content}}],
                         "usage": {"prompt_tokens": 100, "completion_tokens": 50}})

    def _send(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def chat_service():
    ChatService.log = []
    ChatService.fail_first = 1
    server = ThreadingHTTPServer(("127.0.0.1", 0), ChatService)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


SEEDS = [SeedQuestion(f"s{i}", f"question {i}" + (" odd" if i == 2 else " mute" if i == 4 else ""), str(i), "toy")
         for i in range(12)]
COST_PER_REPLY = (100 * 0.01 + 50 * 0.02) / 1000  # the service's usage at the configured prices


def api_config(endpoint, output, cap):
    return ApiGeneratorConfig(endpoint=endpoint, model="toy-model", output=output, price_per_1k_prompt_tokens=0.01,
                              price_per_1k_completion_tokens=0.02, cost_limit_usd=cap, api_key_env="QS_TEST_KEY",
                              max_tokens=64, max_retries=2, backoff_seconds=0.01, timeout_seconds=10)


def test_api_generator_caps_cost_retries_rejects_and_resumes(chat_service, tmp_path, monkeypatch):
    monkeypatch.setenv("QS_TEST_KEY", "sk-test")
    output = tmp_path / "api.jsonl"
    # A cap that admits the worst case of one request plus 3.5 replies' real cost: 4 requests are made.
    cap = worst_case_usd(api_config(chat_service, output, 1.0), request_messages(SEEDS[0])) + 3.5 * COST_PER_REPLY
    generator = ApiReasoningGenerator(api_config(chat_service, output, cap), SEEDS)
    got = []
    with pytest.raises(CostCapReached, match="raise cost_limit_usd"):
        for example in generator.generate(8):
            got.append(example)
    assert ChatService.fail_first == 0 and len(ChatService.log) == 4  # the HTTP 500 was retried
    spent = generator.ledger["spent_usd"]
    assert math.isclose(spent, 4 * COST_PER_REPLY)
    next_request = request_messages(SEEDS[generator.ledger["next_seed"]])
    assert spent <= cap < spent + worst_case_usd(generator.config, next_request)  # stopped before crossing it
    assert [example.id for example in got] == ["api/s0", "api/s1", "api/s3"]
    assert generator.ledger["rejected"] == {"answer differs from the known one": 1}

    with open(output, "ab") as handle:  # a crash in the middle of writing a line
        handle.write(b'{"id": "api/tor')
    resumed = ApiReasoningGenerator(api_config(chat_service, output, cap=1.0), SEEDS)
    examples = list(resumed.generate(8))
    assert [example.id for example in examples[:len(got)]] == [example.id for example in got]
    assert len(examples) == 8 and len({example.id for example in examples}) == 8
    assert len(ChatService.log) == len(set(ChatService.log))  # no question was paid for twice
    assert resumed.ledger["rejected"] == {"answer differs from the known one": 1,
                                          "no [thinking] ... [/endthinking] block": 1}
    assert math.isclose(resumed.ledger["spent_usd"], len(ChatService.log) * COST_PER_REPLY)
    loaded, metadata = read_dataset(output)
    assert loaded == examples and metadata["api"]["requests"] == len(ChatService.log)
    assert all(example.generator == "api:toy-model" and example.strategies == ("<step>", "<doubt>")
               for example in loaded)
    assert validate_examples(loaded, min_examples=8).failures()[0].name == "all_strategies"

    with pytest.raises(ValueError, match="another output file"):
        ApiReasoningGenerator(ApiGeneratorConfig(**{**api_config(chat_service, output, 1.0).__dict__,
                                                    "model": "other"}), SEEDS)


def test_api_generator_refuses_a_bad_key_without_retrying(chat_service, tmp_path, monkeypatch):
    monkeypatch.delenv("QS_TEST_KEY", raising=False)
    with pytest.raises(ValueError, match="QS_TEST_KEY"):
        ApiReasoningGenerator(api_config(chat_service, tmp_path / "a.jsonl", 1.0), SEEDS)
    monkeypatch.setenv("QS_TEST_KEY", "sk-wrong")
    ChatService.fail_first = 0
    generator = ApiReasoningGenerator(api_config(chat_service, tmp_path / "a.jsonl", 1.0), SEEDS)
    with pytest.raises(ApiError, match="HTTP 401"):
        list(generator.generate(1))
    assert generator.ledger["spent_usd"] == 0.0


# ---------------------------------------------------------------- rewards


def test_thought_rewards_use_a_leave_one_out_baseline_worked_by_hand():
    logp = torch.tensor([[[-1.0, -2.0, -3.0], [-4.0, -4.0, -1.0]]])
    # position 0: baselines (-2-3)/2=-2.5, (-1-3)/2=-2, (-1-2)/2=-1.5 -> rewards 1.5, 0, -1.5
    # position 1: baselines (-4-1)/2=-2.5, -2.5, (-4-4)/2=-4 -> rewards -1.5, -1.5, 3
    expected = torch.tensor([[[1.5, 0.0, -1.5], [-1.5, -1.5, 3.0]]])
    assert torch.allclose(thought_rewards(logp), expected)
    with pytest.raises(ValueError, match="at least 2 thoughts"):
        thought_rewards(torch.zeros(1, 1, 1))


def test_reinforce_loss_weights_thought_logprobs_by_detached_rewards():
    rewards = torch.tensor([[[1.5, 0.0, -1.5], [3.0, -3.0, 0.0]]], requires_grad=True)
    logprobs = torch.tensor([[[-2.0, -1.0, -0.5], [-1.0, -1.0, -1.0]]], requires_grad=True)
    mask = torch.tensor([[1, 0]])
    loss = reinforce_loss(rewards, logprobs, mask)
    assert math.isclose(loss.item(), -(1.5 * -2.0 + 0 + -1.5 * -0.5) / 3)
    loss.backward()
    assert torch.allclose(logprobs.grad, torch.tensor([[[-0.5, 0.0, 0.5], [0.0, 0.0, 0.0]]]))
    assert rewards.grad is None
    positive = reinforce_loss(rewards, logprobs, positive_only=True)
    assert math.isclose(positive.item(), -(1.5 * -2.0 + 3.0 * -1.0) / 6)


def test_sequence_logprob_sums_masked_token_logprobs():
    logits = torch.zeros(2, 3, 4)  # uniform over 4 tokens: each token costs log 4
    tokens = torch.tensor([[0, 1, 2], [3, 3, 3]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert torch.allclose(sequence_logprob(logits, tokens, mask), torch.tensor([-3 * math.log(4), -math.log(4)]))


def test_mixing_head_starts_near_base_and_learns_to_trust_useful_thoughts():
    torch.manual_seed(0)
    head = MixingHead(hidden_size=8, init_weight=0.05)
    hidden_base, hidden_thought = torch.randn(16, 8), torch.randn(16, 8)
    logits_base, logits_thought = torch.randn(16, 5), torch.randn(16, 5)
    mixed, weight = head(hidden_base, hidden_thought, logits_base, logits_thought)
    assert torch.allclose(weight, torch.full((16, 1), 0.05))
    assert torch.allclose(mixed, 0.05 * logits_thought + 0.95 * logits_base)
    target = logits_thought.argmax(dim=-1)  # the thought's prediction is the right one
    logits_thought = logits_thought + 5 * torch.nn.functional.one_hot(target, 5)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(40):
        mixed, weight = head(hidden_base, hidden_thought, logits_base, logits_thought)
        loss = torch.nn.functional.cross_entropy(mixed, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert weight.min().item() > 0.5


# ---------------------------------------------------------------- anti-theater


def test_divergence_fails_for_a_thought_that_copies_the_continuation():
    direct = [[5, 6, 7, 8], [1, 2, 3, 4]]
    copied = thought_divergence([[6, 7, 8, 5], [4, 3, 2, 1]], direct)  # shifted / reversed copies
    assert copied.value == 0.0 and not copied.passed and copied.threshold == 0.3
    different = thought_divergence([[9, 10, 11, 5], [20, 21, 22, 23]], direct)
    assert math.isclose(different.value, (0.75 + 1.0) / 2) and different.passed


def test_ablation_fails_when_removing_thoughts_costs_nothing():
    same = ablation_drop(torch.tensor([1, 1, 0, 1]), torch.tensor([1, 1, 0, 1]))
    assert same.value == 0.0 and not same.passed
    helped = ablation_drop(torch.tensor([1, 1, 1, 1]), torch.tensor([1, 0, 1, 1]))
    assert math.isclose(helped.value, 0.25) and helped.passed


def test_correlation_fails_when_coherence_does_not_track_utility():
    utility = torch.tensor([0.1, 0.5, 0.9, 1.3])
    opposed = coherence_utility_correlation(torch.tensor([4.0, 3.0, 2.0, 1.0]), utility)
    assert math.isclose(opposed.value, -1.0) and not opposed.passed
    constant = coherence_utility_correlation(torch.ones(4), utility)
    assert math.isnan(constant.value) and not constant.passed and "constant" in constant.detail
    tracking = coherence_utility_correlation(torch.tensor([1.0, 2.1, 2.9, 4.2]), utility)
    assert tracking.value > 0.99 and tracking.passed
    report = AntiTheaterReport(thought_divergence([[1]], [[2]]), ablation_drop([1], [0]), opposed)
    assert not report.all_passed and report.metrics()["anti_theater/correlation"] == pytest.approx(-1.0)


# ---------------------------------------------------------------- CLI


def test_cli_writes_a_validated_offline_dataset(shared_data, tmp_path, capsys):
    from forge.quietstar.__main__ import main

    output = tmp_path / "reasoning.jsonl"
    assert main(["--output", str(output), "--n", "40", "--data-dir", str(shared_data)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["passed"] and summary["examples"] == 40
    examples, metadata = read_dataset(output)
    assert len(examples) == 40 and metadata["total_examples"] == 40 and len(metadata["special_tokens"]) == 12
    assert main(["--output", str(output), "--n", "20", "--min-examples", "30", "--data-dir", str(shared_data)]) == 1
    assert "20 examples, need at least 30" in capsys.readouterr().out
    assert main(["--output", str(output), "--n", "5", "--data-dir", str(tmp_path / "missing")]) == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["--output", str(output), "--endpoint", "http://localhost:1/v1"])
    assert exit_info.value.code == 2
