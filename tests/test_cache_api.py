"""Both KV-cache conventions of transformers (``past_key_values`` before 5.24, ``cache`` since) are found."""
import logging
from dataclasses import dataclass

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.utils import ModelOutput

from benchmarks.lm import loglikelihood_choices, probe_model
from forge.data.tokenizer import load_gpt2_tokenizer
from forge.models.cache_api import CACHE_NAMES, cache_argument, cache_kwargs, returned_cache

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REQUESTS = [("Question: Which gas do plants take in?\nAnswer:", [" carbon dioxide", " oxygen"]),
            ("The cat sat on the ", ["mat", "sofa and slept"])]


@pytest.fixture(scope="module")
def tokenizer():
    return load_gpt2_tokenizer()


def _gpt2(vocab):
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=vocab, n_positions=128)).eval()


def _llama(vocab):
    torch.manual_seed(1)
    return LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2, vocab_size=vocab,
                                        max_position_embeddings=128)).eval()


@dataclass
class OldStyleOutput(ModelOutput):
    """An output class of the ``past_key_values`` era (transformers < 5.24, remote-code models)."""

    logits: torch.Tensor | None = None
    past_key_values: object = None


class OldStyleLM(torch.nn.Module):
    """A causal LM written against the old convention: takes and returns ``past_key_values``."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, input_ids, past_key_values=None, use_cache=False):
        out = self.inner(input_ids, use_cache=use_cache, **cache_kwargs(self.inner, past_key_values))
        return OldStyleOutput(logits=out.logits, past_key_values=returned_cache(out))


@pytest.mark.parametrize("build", [_gpt2, _llama])
def test_the_installed_transformers_cache_is_found_and_used(build, tokenizer):
    model = build(len(tokenizer))
    assert cache_argument(model) in CACHE_NAMES
    assert returned_cache(model(torch.tensor([[1, 2, 3]]), use_cache=True)) is not None
    info = probe_model(model, tokenizer)
    assert info.kv_cache and info.decoder


def test_the_old_convention_is_found_and_scores_equal_the_new(tokenizer):
    model = _gpt2(len(tokenizer))
    old = OldStyleLM(model)
    assert cache_argument(old) == "past_key_values"
    assert returned_cache(old(torch.tensor([[1, 2, 3]]), use_cache=True)) is not None
    assert probe_model(old, tokenizer).kv_cache
    ours = loglikelihood_choices(model, tokenizer, REQUESTS)
    theirs = loglikelihood_choices(old, tokenizer, REQUESTS)
    assert [v for row in theirs for v in row] == pytest.approx([v for row in ours for v in row], abs=1e-4)


def test_a_model_without_a_cache_is_reported_once(tokenizer, caplog):
    class NoCache(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, input_ids):
            return self.inner(input_ids, use_cache=False)

    model = NoCache(_gpt2(len(tokenizer)))
    assert cache_argument(model) is None and cache_kwargs(model, object()) == {}
    with caplog.at_level(logging.INFO, logger="benchmarks.lm"):
        assert not probe_model(model, tokenizer).kv_cache
        assert not probe_model(model, tokenizer).kv_cache
    said = [r.getMessage() for r in caplog.records if "no usable KV cache" in r.getMessage()]
    assert len(said) == 1 and "NoCache" in said[0] and "takes no cache" in said[0]


def test_a_peft_wrapper_takes_the_cache_under_its_base_models_name():
    from peft import LoraConfig, get_peft_model

    base = _gpt2(64)
    wrapped = get_peft_model(base, LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True)).eval()
    assert cache_argument(wrapped) == cache_argument(base) is not None
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        full = wrapped(ids).logits[:, -1]
        past = returned_cache(wrapped(ids[:, :2], use_cache=True))
        step = wrapped(ids[:, 2:], use_cache=True, **cache_kwargs(wrapped, past)).logits[:, -1]
    assert torch.allclose(full, step, atol=1e-5)
