"""The CUDA attention kernel (block-sparse FlexAttention) against the blocked SDPA one, run on CPU."""
import pytest
import torch
from torch.nn.attention.flex_attention import flex_attention

import forge.models.layers as layers
from forge.models import CognateConfig, CognateForCausalLM

VOCAB = 97


@pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile")
@pytest.mark.parametrize("length", [7, 19])  # within one window, and across three windows of 8
def test_flex_attention_gives_the_blocked_logits_with_padding(length, monkeypatch):
    config = CognateConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, sliding_window=8, ltm_slots=16, memory_dim=8, memory_chunk_size=4,
                           act_max_steps=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=None,
                           eos_token_id=None)
    torch.manual_seed(0)
    model = CognateForCausalLM(config).train()  # (no dropout) a training forward records the max logit
    ids = torch.randint(1, VOCAB, (3, length), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    mask[2, -2:] = 0  # right padding
    with torch.no_grad():
        blocked = model(ids, attention_mask=mask).logits
        blocked_max = [a.max_attn_logit for a in model.attention_modules()]
        # eager FlexAttention (CUDA compiles it): the same mask function and kernel, on CPU
        monkeypatch.setattr(layers, "_attention_kernel", lambda device: "flex")
        monkeypatch.setattr(layers, "_flex_attention", lambda: flex_attention)
        flex = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(flex, blocked, rtol=0, atol=1e-5)
    assert [a.max_attn_logit for a in model.attention_modules()] == pytest.approx(blocked_max, rel=1e-5)


def test_attention_kernel_is_flex_only_on_cuda():
    assert layers._attention_kernel(torch.device("cpu")) == "blocked"
    assert layers._attention_kernel(torch.device("cuda", 0)) == "flex"
