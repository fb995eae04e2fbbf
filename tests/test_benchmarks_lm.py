"""The model side: log-likelihoods, generation and perplexity equal direct computations."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.modeling_outputs import CausalLMOutput

from benchmarks.lm import encode, encode_pair, generate_until, loglikelihood_choices, perplexity, probe_model
from forge.data.tokenizer import load_gpt2_tokenizer

REQUESTS = [
    ("Question: Which gas do plants take in?\nAnswer:", [" carbon dioxide", " oxygen", " helium gas today"]),
    ("Question: Which gas do plants give off?\nAnswer:", [" oxygen", " neon", " xenon", " argon"]),
    ("The cat sat on the ", ["mat", "sofa and slept"]),  # trailing space moves to the continuation
    ("Short", [" a", " b"]),
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer():
    return load_gpt2_tokenizer()


def _gpt2(vocab, positions=128):
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=vocab, n_positions=positions)).eval()


def _llama(vocab, positions=128):
    torch.manual_seed(1)
    return LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2, vocab_size=vocab,
                                        max_position_embeddings=positions)).eval()


class NoCacheLM(torch.nn.Module):
    """A causal LM whose forward knows nothing of caches (as a model that recomputes its prefix)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, input_ids):
        return CausalLMOutput(logits=self.inner(input_ids, use_cache=False).logits)


class SoftCappedLM(torch.nn.Module):
    """A causal LM whose logits are soft-capped after the head (as Gemma 2's), so the head of the last
    hidden state is not its logits."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, input_ids, output_hidden_states=False):
        out = self.inner(input_ids, use_cache=False, output_hidden_states=output_hidden_states)
        return CausalLMOutput(logits=3.0 * torch.tanh(out.logits / 3.0), hidden_states=out.hidden_states)


def test_a_head_that_is_not_the_logits_keeps_the_full_logits_path(tokenizer):
    model = SoftCappedLM(_gpt2(len(tokenizer)))
    info = probe_model(model, tokenizer)
    assert not info.hidden_head and not info.kv_cache
    direct = [[_direct_loglikelihood(model, tokenizer, ctx, cont) for cont in conts] for ctx, conts in REQUESTS]
    assert _flat(loglikelihood_choices(model, tokenizer, REQUESTS, info=info)) == pytest.approx(_flat(direct), abs=1e-4)


def test_a_cognate_model_scores_through_its_decoder_and_cache(tokenizer):
    from forge.models import CognateConfig, CognateForCausalLM

    torch.manual_seed(0)
    model = CognateForCausalLM(CognateConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        ltm_slots=16, memory_dim=8, memory_chunk_size=8, sliding_window=16, act_max_steps=2, pad_token_id=0,
        bos_token_id=0, eos_token_id=0)).eval()
    info = probe_model(model, tokenizer)
    # Contexts run once into Cognate's cache; head(decoder) is the model's logits: only continuation rows are
    # projected. Without the cache (the plain path) and with full logits the scores are the same.
    assert info.decoder and info.hidden_head and info.kv_cache
    direct = [[_direct_loglikelihood(model, tokenizer, ctx, cont) for cont in conts] for ctx, conts in REQUESTS]
    full_logits = dataclasses.replace(info, hidden_head=False, decoder=False)
    for got in (loglikelihood_choices(model, tokenizer, REQUESTS, info=info),
                loglikelihood_choices(model, tokenizer, REQUESTS, info=dataclasses.replace(info, kv_cache=False)),
                loglikelihood_choices(model, tokenizer, REQUESTS, info=full_logits)):
        assert _flat(got) == pytest.approx(_flat(direct), abs=1e-4)


def _flat(nested):
    return [value for row in nested for value in row]


def _direct_loglikelihood(model, tokenizer, context, continuation):
    context_ids, cont_ids = encode_pair(tokenizer, context, continuation)
    ids = torch.tensor([context_ids + cont_ids])
    with torch.no_grad():
        logprobs = F.log_softmax(model(ids).logits.float(), dim=-1)[0]
    return sum(float(logprobs[len(context_ids) - 1 + j, token]) for j, token in enumerate(cont_ids))


@pytest.mark.parametrize("build", [_gpt2, _llama])
def test_loglikelihoods_equal_direct_forward_in_every_path(build, tokenizer, monkeypatch):
    import benchmarks.lm

    # Three continuation positions per block of the vocabulary projection: many blocks, a short last one.
    monkeypatch.setattr(benchmarks.lm, "HEAD_CHUNK_ELEMENTS", 3 * len(tokenizer))
    model = build(len(tokenizer))
    info = probe_model(model, tokenizer)
    assert info.kv_cache
    direct = [[_direct_loglikelihood(model, tokenizer, ctx, cont) for cont in conts] for ctx, conts in REQUESTS]
    shared = loglikelihood_choices(model, tokenizer, REQUESTS, info=info)
    plain = loglikelihood_choices(model, tokenizer, REQUESTS, info=info, shared_context=False)
    one_by_one = [loglikelihood_choices(model, tokenizer, [request], info=info, batch_size=1)[0]
                  for request in REQUESTS]
    # The vocabulary projection of real positions only (from the decoder alone, or from the model's hidden
    # states), and the full logits it replaces.
    assert info.hidden_head and info.decoder
    through_model = dataclasses.replace(info, decoder=False)
    model_shared = loglikelihood_choices(model, tokenizer, REQUESTS, info=through_model)
    model_plain = loglikelihood_choices(model, tokenizer, REQUESTS, info=through_model, shared_context=False)
    full_logits = dataclasses.replace(info, hidden_head=False, decoder=False)
    full_shared = loglikelihood_choices(model, tokenizer, REQUESTS, info=full_logits)
    full_plain = loglikelihood_choices(model, tokenizer, REQUESTS, info=full_logits, shared_context=False)
    for got in (shared, plain, one_by_one, model_shared, model_plain, full_shared, full_plain):
        assert [len(row) for row in got] == [len(row) for row in direct]
        assert _flat(got) == pytest.approx(_flat(direct), abs=1e-4)
    no_cache = NoCacheLM(model)
    assert not probe_model(no_cache, tokenizer).kv_cache
    assert _flat(loglikelihood_choices(no_cache, tokenizer, REQUESTS)) == pytest.approx(_flat(direct), abs=1e-4)


def test_shared_context_runs_each_context_once(tokenizer):
    model = _gpt2(len(tokenizer))
    info = probe_model(model, tokenizer)
    # Two items with equal context length, four one-token choices each: one forward pass in total.
    requests = [("Question: A?\nAnswer:", [" A", " B", " C", " D"]), ("Question: B?\nAnswer:", [" A", " B", " C", " D"])]
    assert len(encode(tokenizer, requests[0][0])) == len(encode(tokenizer, requests[1][0]))
    calls = []
    # The decoder runs in every path: the model's own forward calls it, and the engine calls it directly.
    assert info.decoder
    handle = model.get_decoder().register_forward_hook(lambda module, args, kwargs_out: calls.append(1))
    try:
        loglikelihood_choices(model, tokenizer, requests, info=info)
        shared_calls = len(calls)
        calls.clear()
        loglikelihood_choices(model, tokenizer, requests, info=info, shared_context=False, batch_size=1)
    finally:
        handle.remove()
    assert shared_calls == 1
    assert len(calls) == 8


def test_long_contexts_are_left_truncated_like_lm_eval(tokenizer):
    model = _gpt2(len(tokenizer), positions=16)
    context = " ".join(["word"] * 40) + "\nAnswer:"
    got = loglikelihood_choices(model, tokenizer, [(context, [" yes", " no"])])[0]
    for value, cont in zip(got, [" yes", " no"]):
        context_ids, cont_ids = encode_pair(tokenizer, context, cont)
        ids = (context_ids + cont_ids)[-17:][:-1]
        with torch.no_grad():
            logprobs = F.log_softmax(model(torch.tensor([ids])).logits, dim=-1)[0]
        expected = sum(float(logprobs[len(ids) - len(cont_ids) + j, t]) for j, t in enumerate(cont_ids))
        assert value == pytest.approx(expected, abs=1e-4)


def test_greedy_generation_matches_transformers_generate(tokenizer):
    model = _llama(len(tokenizer))
    prompts = ["Question: What is two plus two?\nAnswer:", "Once upon a time", "Question: Who?\nAnswer:"]
    ours = generate_until(model, tokenizer, prompts, max_new_tokens=12)
    for prompt, text in zip(prompts, ours):
        ids = torch.tensor([encode(tokenizer, prompt)])
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                                 pad_token_id=tokenizer.eos_token_id)
        expected = tokenizer.decode(out[0, ids.shape[1]:]).split(tokenizer.eos_token)[0]
        assert text == expected
    # The same prompts without a cache (prefix recomputed every step) give the same text.
    assert generate_until(NoCacheLM(model), tokenizer, prompts, max_new_tokens=12) == ours
    # Batching prompts of equal length changes nothing.
    same_length = ["Question: Red?\nAnswer:", "Question: Tea?\nAnswer:"]
    assert len({len(encode(tokenizer, p)) for p in same_length}) == 1
    batched = generate_until(model, tokenizer, same_length, max_new_tokens=8)
    single = [generate_until(model, tokenizer, [p], max_new_tokens=8)[0] for p in same_length]
    assert batched == single


def test_suppressed_tokens_are_never_generated(tokenizer):
    model = _llama(len(tokenizer))
    prompt = ["Question: What is two plus two?\nAnswer:"]
    free = generate_until(model, tokenizer, prompt, max_new_tokens=6)[0]
    ids = encode(tokenizer, free)
    suppressed = generate_until(model, tokenizer, prompt, max_new_tokens=6, suppress_token_ids=ids[:2])[0]
    assert not set(encode(tokenizer, suppressed)) & set(ids[:2]) and suppressed != free


def test_stop_sequences_end_generation_early(tokenizer):
    model = _gpt2(len(tokenizer))
    free = generate_until(model, tokenizer, ["Hello there"], max_new_tokens=20)[0]
    stop = free[3:6]  # a piece the model will produce; generation must stop there
    steps = []
    handle = model.register_forward_hook(lambda *args: steps.append(1))
    try:
        cut = generate_until(model, tokenizer, ["Hello there"], max_new_tokens=20, until=[stop])[0]
    finally:
        handle.remove()
    assert cut == free.split(stop)[0]
    assert len(steps) < 20


def test_perplexity_is_exp_mean_token_nll_with_each_token_scored_once(tokenizer):
    model = _gpt2(len(tokenizer), positions=16)
    texts = ["The quick brown fox jumps over the lazy dog.", "A second paragraph, somewhat longer than the first one."]
    ids = torch.tensor(encode(tokenizer, "\n\n".join(texts)))
    assert 16 < ids.numel() < 32
    with torch.no_grad():
        # Reference: token t is predicted from the window that first reaches it (stride 4, width 16).
        nll, count, previous_end = 0.0, 0, 1
        for begin in range(0, ids.numel(), 4):
            end = min(begin + 16, ids.numel())
            logprobs = F.log_softmax(model(ids[begin:end][None]).logits, dim=-1)[0]
            for t in range(max(previous_end, begin + 1), end):
                nll -= float(logprobs[t - 1 - begin, ids[t]])
                count += 1
            previous_end = end
            if end == ids.numel():
                break
    assert count == ids.numel() - 1
    assert perplexity(model, tokenizer, texts, max_length=16, stride=4) == pytest.approx(math.exp(nll / count),
                                                                                       rel=1e-5)
    with pytest.raises(ValueError, match="stride"):
        perplexity(model, tokenizer, texts, max_length=16, stride=32)


def test_perplexity_gives_the_one_window_at_a_time_result_with_its_windows_batched(tokenizer):
    from forge.models import CognateConfig, CognateForCausalLM

    torch.manual_seed(0)
    model = CognateForCausalLM(CognateConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, sliding_window=8,
                                             ltm_slots=8, memory_dim=8, memory_chunk_size=4,
                                             max_position_embeddings=64)).eval()
    texts = [f"Paragraph {i}: the numbers {i * 7} and {i * 13} add up to {i * 20}." for i in range(12)]
    assert len(encode(tokenizer, "\n\n".join(texts))) > 10 * 16  # many full windows, a short last one
    alone = perplexity(model, tokenizer, texts, max_length=16, stride=8, max_batch_tokens=16)  # one per pass
    assert perplexity(model, tokenizer, texts, max_length=16, stride=8) == alone  # exactly, not approximately
    assert perplexity(model, tokenizer, texts, max_length=16, stride=8, max_batch_tokens=48) == alone
