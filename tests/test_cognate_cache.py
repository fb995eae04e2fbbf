"""Cognate's decoding cache: cached logits equal the full forward's at every position; generate() and our
sampling loops give the same outputs with and without it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from forge.baking.config import BakingConfig
from forge.baking.trajectories import sample_trajectories
from forge.data.tokenizer import train_bpe_tokenizer
from forge.models import CognateCache, CognateConfig, CognateForCausalLM
from forge.quietstar.generate import generate
from forge.quietstar.rl import ThinkIds, greedy_continuation, sample_thoughts

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB = 97


def tiny_model(seed: int = 0, halt_scale: float = 1.0, **overrides) -> CognateForCausalLM:
    """Window 8 and memory chunks of 4: 29 tokens span 4 attention blocks and 8 chunks. ``halt_scale``
    sharpens the halting head so that tokens halt after different numbers of ACT steps."""
    fields = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, sliding_window=8, ltm_slots=16, memory_dim=8, memory_chunk_size=4,
                  act_max_steps=3, trm_refinements=2, max_position_embeddings=64,
                  pad_token_id=0, bos_token_id=None, eos_token_id=None)
    fields.update(overrides)
    torch.manual_seed(seed)
    model = CognateForCausalLM(CognateConfig(**fields)).eval()
    with torch.no_grad():
        model.model.halt_head.weight.mul_(halt_scale)
    return model


def tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def decode_in_pieces(model, ids: torch.Tensor, widths, attention_mask=None):
    """Logits of ``ids`` from cached calls of the given widths (the first is the prefill), and their steps."""
    cache, pieces, steps, start = None, [], [], 0
    for width in widths:
        end = start + width
        mask = None if attention_mask is None else attention_mask[:, :end]
        out = model(ids[:, start:end], attention_mask=mask, cache=cache, use_cache=True)
        cache = out.cache
        pieces.append(out.logits)
        steps.append(out.computed_steps)
        start = end
    assert start == ids.shape[1]
    return torch.cat(pieces, dim=1), steps, cache


# ACT settings: always all steps (bias -3); mostly early halting (bias 2); varied halting (sharp head).
ACT_SETTINGS = [dict(act_max_steps=2, act_halt_bias_init=-3.0),
                dict(act_max_steps=4, act_halt_bias_init=2.0, halt_scale=30.0),
                dict(act_max_steps=3, act_threshold=0.6, act_halt_bias_init=-0.2, halt_scale=30.0),
                dict(act_max_steps=2, trm_refinements=1, trm_latent_updates=2)]


@pytest.mark.parametrize("settings", ACT_SETTINGS)
def test_cached_logits_equal_the_full_forward_at_every_position(settings):
    model = tiny_model(**settings)
    ids = tokens(3, 29)
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
    for widths in ([1] * 29, [11, 1, 1, 3, 1, 9, 1, 1, 1], [29]):
        cached, _, cache = decode_in_pieces(model, ids, widths)
        torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)
        assert cache.get_seq_length() == 29


def test_act_steps_skipped_by_early_tokens_run_later_for_the_tokens_that_need_them():
    model = tiny_model(act_max_steps=4, act_halt_bias_init=2.0, halt_scale=30.0)
    ids = tokens(1, 29, seed=4)
    with torch.no_grad():
        full = model(ids, use_cache=False)
    cached, steps, _ = decode_in_pieces(model, ids, [1] * 29)
    # some tokens stop after fewer steps than a later token needs: that token runs the skipped steps of
    # the earlier ones first (pending columns), and its logits still match
    assert min(steps) < max(steps) == full.computed_steps
    assert any(later > earlier for earlier, later in zip(steps, steps[1:]))
    torch.testing.assert_close(cached, full.logits, atol=1e-5, rtol=1e-5)


def test_a_prefix_then_one_token_equals_the_full_forward_last_position():
    model = tiny_model()
    ids = tokens(2, 21, seed=7)
    with torch.no_grad():
        full = model(ids, use_cache=False).logits[:, -1]
        first = model(ids[:, :-1], use_cache=True)
        step = model(ids[:, -1:], past_key_values=first.past_key_values, use_cache=True)
    torch.testing.assert_close(step.logits[:, -1], full, atol=1e-5, rtol=1e-5)
    assert step.cache is first.cache and step.cache.get_seq_length() == 21


def test_left_padded_rows_decode_like_the_full_forward():
    model = tiny_model(act_max_steps=3, act_threshold=0.6, act_halt_bias_init=-0.2, halt_scale=30.0)
    ids = tokens(3, 26, seed=9)
    lead = torch.tensor([0, 3, 6])  # rows complete their memory chunks at different columns
    mask = (torch.arange(26)[None] >= lead[:, None]).long()
    ids = ids.masked_fill(mask == 0, 0)
    with torch.no_grad():
        full = model(ids, attention_mask=mask, use_cache=False).logits
    for widths in ([1] * 26, [10, 1, 2, 1, 12]):
        cached, _, _ = decode_in_pieces(model, ids, widths, attention_mask=mask)
        real = mask.bool()
        torch.testing.assert_close(cached[real], full[real], atol=1e-5, rtol=1e-5)


def test_reorder_cache_keeps_and_repeats_rows():
    model = tiny_model()
    ids = tokens(3, 18, seed=2)
    index = torch.tensor([2, 0, 0])
    with torch.no_grad():
        out = model(ids[:, :13], use_cache=True)
        out.cache.reorder_cache(index)
        rest = model(ids[index, 13:], cache=out.cache, use_cache=True).logits
        full = model(ids[index], use_cache=False).logits[:, 13:]
    torch.testing.assert_close(rest, full, atol=1e-5, rtol=1e-5)


def test_unsupported_calls_are_refused_clearly():
    model = tiny_model()
    ids = tokens(2, 6)
    with pytest.raises(RuntimeError, match="torch.no_grad"):
        model(ids, use_cache=True)
    with torch.no_grad():
        cache = model(ids, use_cache=True).cache
        with pytest.raises(ValueError, match="left padding only"):
            model(ids[:, :2], attention_mask=torch.tensor([[1, 1, 1, 1, 1, 1, 0, 1]] * 2), cache=cache)
        with pytest.raises(ValueError, match="covers the cached columns"):
            model(ids[:, :1], attention_mask=torch.ones(2, 1), cache=cache)
        with pytest.raises(ValueError, match="rows"):
            model(ids[:1, :1], cache=cache)
        with pytest.raises(ValueError, match="labels"):
            model(ids[:, :1], labels=ids[:, :1], cache=cache)
        with pytest.raises(ValueError, match="once"):
            model(ids[:, :1], cache=cache, past_key_values=cache)
    assert isinstance(cache, CognateCache)


def _input_widths(model):
    """Record the token width of every forward of ``model``'s decoder."""
    widths = []
    model.model.register_forward_pre_hook(lambda module, args, kwargs: widths.append(kwargs["input_ids"].shape[1]),
                                          with_kwargs=True)
    return widths


def test_generate_decodes_from_the_cache_with_the_uncached_tokens():
    model = tiny_model(act_max_steps=3, act_threshold=0.6, act_halt_bias_init=-0.2, halt_scale=30.0)
    prompts = tokens(2, 13, seed=3)
    mask = torch.ones_like(prompts)
    mask[1, :4] = 0
    widths = _input_widths(model)
    cached = model.generate(prompts, attention_mask=mask, max_new_tokens=12, do_sample=False)
    assert widths == [13] + [1] * 11  # the prompt once, then one token per step
    uncached = model.generate(prompts, attention_mask=mask, max_new_tokens=12, do_sample=False, use_cache=False)
    assert widths[12:] == list(range(13, 25))  # without the cache every step reruns the prefix
    assert torch.equal(cached, uncached)


# ---------------------------------------------------------------- our sampling loops, with and without cache

TEXTS = [f"question {i}: what is {i} plus {3 * i}? the answer is {4 * i}." for i in range(120)]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(TEXTS, vocab_size=300)


def loop_model(tokenizer, kind: str):
    torch.manual_seed(0)
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=len(tokenizer), n_positions=128,
                                          initializer_range=0.2, eos_token_id=tokenizer.eos_token_id)).eval()
    model = tiny_model(vocab_size=len(tokenizer), sliding_window=16, memory_chunk_size=8, initializer_range=0.2,
                       act_threshold=0.6, act_halt_bias_init=-0.2, halt_scale=30.0, max_position_embeddings=128,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    return model


def with_and_without_cache(model, run):
    """``run()`` with the model's cache, then with ``config.use_cache = False``; and the forwards' widths."""
    widths = []
    handle = model.register_forward_pre_hook(lambda module, args, kwargs: widths.append(
        (kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]).shape[1]), with_kwargs=True)
    cached = run()
    cached_widths = list(widths)
    model.config.use_cache = False
    try:
        uncached = run()
    finally:
        model.config.use_cache = True
        handle.remove()
    return cached, uncached, cached_widths


@pytest.mark.parametrize("kind", ["cognate", "gpt2"])
@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_quietstar_generate_is_the_same_with_and_without_the_cache(tokenizer, kind, temperature):
    model = loop_model(tokenizer, kind)
    prompts = ["question 3: what is", "question 12: what is 12 plus", "question 5: what"]
    cached, uncached, widths = with_and_without_cache(model, lambda: generate(
        model, tokenizer, prompts, max_new_tokens=20, temperature=temperature, seed=5))
    assert [o.full_text for o in cached] == [o.full_text for o in uncached]
    assert sum(o.generated_tokens for o in cached) > 20
    assert widths.count(1) > len(widths) // 2  # decoding fed one token per step


@pytest.mark.parametrize("kind", ["cognate", "gpt2"])
def test_sampled_trajectories_are_the_same_with_and_without_the_cache(tokenizer, kind):
    model = loop_model(tokenizer, kind)
    config = BakingConfig(max_new_tokens=12, samples_per_input=3, temperature=1.0)
    cached, uncached, widths = with_and_without_cache(model, lambda: sample_trajectories(
        model, tokenizer, "answer briefly. ", ["question 7: what is 7 plus 21?"], config,
        torch.Generator().manual_seed(0)))
    assert cached == uncached and len(cached) == 3
    assert widths.count(1) > len(widths) // 2


def test_thought_sampling_is_the_same_with_and_without_the_cache(tokenizer):
    model = loop_model(tokenizer, "cognate")
    context = torch.tensor([tokenizer("question 9: what is 9 plus 27?")["input_ids"]] * 3)
    think = ThinkIds(start=5, end=6)
    cached, uncached, _ = with_and_without_cache(model, lambda: (
        sample_thoughts(model, context, think, 8, 1.0, torch.Generator().manual_seed(1)),
        greedy_continuation(model, context, 8)))
    assert torch.equal(cached[0], uncached[0]) and torch.equal(cached[1], uncached[1])


def test_generation_benchmark_script_writes_its_json(tmp_path):
    repo = Path(__file__).resolve().parent.parent
    out = tmp_path / "generation.json"
    run = subprocess.run([sys.executable, str(repo / "benchmarks/scripts/cognate_generation.py"), "--prompt-tokens",
                          "5", "--new-tokens", "3", "--batch-sizes", "2", "--repeats", "1", "--json", str(out)],
                         cwd=repo, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(repo)})
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(out.read_text())
    assert [(r["loop"], r["batch"]) for r in report["runs"]] == [("forge.decoding", 2), ("transformers.generate", 2)]
    assert all(r["new_tokens_per_s_cache"] > 0 and r["new_tokens_per_s_no_cache"] > 0 for r in report["runs"])
    assert report["cognate_config"]["hidden_size"] == 128  # the tiny preset's architecture
