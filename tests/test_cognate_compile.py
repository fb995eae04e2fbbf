"""CognateConfig.compile_layers: the torch.compile'd decoder layers give the eager logits and gradients."""
import pytest
import torch

from forge.models import CognateConfig, CognateForCausalLM

VOCAB = 61


def config(**overrides) -> CognateConfig:
    """The smallest shapes that still cross two attention blocks (window 8) and three memory chunks (4): one
    layer, ACT steps of one refinement (all with grad), so compiling stays cheap (one forward, one backward graph
    per side of the attention's eager max-logit record)."""
    fields = dict(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  sliding_window=8, ltm_slots=8, memory_dim=4, memory_chunk_size=4, act_max_steps=2,
                  trm_refinements=1, max_position_embeddings=32, pad_token_id=0, bos_token_id=None, eos_token_id=None)
    fields.update(overrides)
    return CognateConfig(**fields)


def test_compiled_layers_give_the_eager_logits_and_gradients():
    torch.manual_seed(0)
    eager = CognateForCausalLM(config()).train()
    compiled = CognateForCausalLM(config(compile_layers=True)).train()
    compiled.load_state_dict(eager.state_dict())
    assert all(layer._compiled_call_impl is not None for layer in compiled.model.layers)
    assert not any(layer._compiled_call_impl is not None for layer in eager.model.layers)
    ids = torch.randint(1, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding: the memory's gates and the attention's key mask take the padded path
    labels = ids.masked_fill(mask == 0, -100)
    outputs = []
    for model in (eager, compiled):
        out = model(ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        outputs.append((out, {name: p.grad for name, p in model.named_parameters()}))
    (expected, expected_grads), (got, got_grads) = outputs
    torch.testing.assert_close(got.logits, expected.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-5, atol=1e-6)
    for name, grad in expected_grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
    assert compiled.attention_modules()[0].max_attn_logit == pytest.approx(eager.attention_modules()[0].max_attn_logit,
                                                                          rel=1e-5)
