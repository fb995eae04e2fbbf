"""Training memory of the Cognate model: recomputation in backward changes no number, only what is kept."""
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

import forge.models  # noqa: F401  (registers model_type "cognate" with the Auto classes)
import forge.models.cognate as cognate_module
from forge.models import CognateConfig, CognateForCausalLM
from forge.models.memory import NeuralMemory, _chunk_rates, _read

VOCAB = 97


def config(**overrides) -> CognateConfig:
    """Window 8 and memory chunks of 4: a 19-token sequence spans 3 attention blocks and 5 memory chunks."""
    fields = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, sliding_window=8, ltm_slots=16, memory_dim=8, memory_chunk_size=4,
                  act_max_steps=3, trm_refinements=2, max_position_embeddings=64,
                  pad_token_id=0, bos_token_id=None, eos_token_id=None)
    fields.update(overrides)
    return CognateConfig(**fields)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, VOCAB, (2, 19), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding in the second row: the rotated path and the masked memory gates
    return ids, mask


def train_step(model: CognateForCausalLM, **kwargs):
    ids, mask = batch()
    labels = ids.masked_fill(mask == 0, -100)
    out = model(ids, attention_mask=mask, labels=labels, **kwargs)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return out, grads


@pytest.mark.parametrize("mode", ["layer", "stack"])
def test_checkpointed_training_step_equals_plain(mode, monkeypatch):
    # Deep-supervision logits in blocks of 5 rows, so the blocked CE path is taken with several blocks.
    monkeypatch.setattr(cognate_module, "LOGITS_BLOCK_ELEMENTS", 5 * VOCAB)
    torch.manual_seed(0)
    plain = CognateForCausalLM(config()).train()
    checkpointed = CognateForCausalLM(config(activation_checkpointing=mode)).train()
    checkpointed.load_state_dict(plain.state_dict())
    expected, expected_grads = train_step(plain)
    got, got_grads = train_step(checkpointed)
    assert got.computed_steps == expected.computed_steps == 3
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-5, atol=1e-6)
    for term in ("loss", "ce_loss", "deep_supervision_loss", "ponder_cost"):
        torch.testing.assert_close(getattr(got, term), getattr(expected, term), rtol=1e-5, atol=1e-6)
    assert got_grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
    for layer_got, layer_expected in zip(checkpointed.attention_modules(), plain.attention_modules()):
        assert layer_got.max_attn_logit == pytest.approx(layer_expected.max_attn_logit)


@pytest.mark.parametrize("mode", ["none", "layer", "stack"])
def test_loss_without_logits_equals_the_plain_loss_and_gradients(mode, monkeypatch):
    """return_logits=False (the trainer's call): the main CE in blocks of 5 tokens, recomputed in backward under
    checkpointing, gives the loss terms and every gradient of the plain forward that returns logits."""
    monkeypatch.setattr(cognate_module, "LOGITS_BLOCK_ELEMENTS", 5 * VOCAB)
    torch.manual_seed(0)
    plain = CognateForCausalLM(config()).train()
    blocked = CognateForCausalLM(config(activation_checkpointing=mode)).train()
    blocked.load_state_dict(plain.state_dict())
    expected, expected_grads = train_step(plain)
    got, got_grads = train_step(blocked, return_logits=False)
    assert got.logits is None
    for term in ("loss", "ce_loss", "deep_supervision_loss", "ponder_cost"):
        torch.testing.assert_close(getattr(got, term), getattr(expected, term), rtol=1e-5, atol=1e-6)
    for name, grad in expected_grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(got_grads[name], grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_checkpointed_loss_without_logits_keeps_no_vocabulary_wide_tensor():
    ids, mask = batch()
    torch.manual_seed(0)
    model = CognateForCausalLM(config(activation_checkpointing="layer")).train()
    with_logits = saved_for_backward(model, ids, attention_mask=mask, labels=ids)
    assert any(len(s) and s[-1] == VOCAB and s.numel() >= ids.numel() * VOCAB for s in with_logits)
    without = saved_for_backward(model, ids, attention_mask=mask, labels=ids, return_logits=False)
    # only the tied (vocab, d) weight itself, no (tokens, vocab) logits
    assert all(s.numel() <= VOCAB * 32 for s in without if VOCAB in s), without


def test_return_logits_false_needs_labels():
    ids, _ = batch()
    with pytest.raises(ValueError, match="return_logits=False returns only the loss; pass labels"):
        CognateForCausalLM(config())(ids, return_logits=False)


def test_memory_chunk_recompute_gives_the_gradients_of_the_stored_graph():
    """The module (chunks recomputed in backward) against the same recurrence run with every chunk stored."""
    torch.manual_seed(0)
    memory = NeuralMemory(config(ltm_slots=32, activation_checkpointing="layer"))
    hidden = torch.randn(2, 14, 32, requires_grad=True)  # 4 chunks, the last one partial
    valid = torch.ones(2, 14, dtype=torch.bool)
    valid[0, -3:] = False
    weight = torch.randn(2, 14, 32)
    got = memory(hidden, valid)
    got_grads = torch.autograd.grad((got * weight).sum(), [hidden, *memory.parameters()])

    q = F.normalize(memory.query_proj(hidden), dim=-1)
    k = F.normalize(memory.key_proj(hidden), dim=-1)
    v = memory.value_proj(hidden)
    lr_logit, eta_logit, forget_logit = memory.gates(hidden).unbind(-1)
    lr = torch.sigmoid(lr_logit) * memory.lr * valid
    log_eta, log_keep = F.logsigmoid(eta_logit) * valid, F.logsigmoid(-forget_logit) * valid
    w1 = memory.init_w1.expand(2, -1, -1)
    w2 = q.new_zeros(2, memory.dim, memory.slots)
    s1, s2 = torch.zeros_like(w1), torch.zeros_like(w2)
    reads = []
    for start in range(0, 14, 4):
        end = start + 4
        part = lambda t: F.pad(t[:, start:end], (0, 0, 0, max(0, end - 14)) if t.dim() == 3 else (0, max(0, end - 14)))  # noqa: E731
        reads.append(_read(part(q), w1, w2))
        w1, w2, s1, s2 = memory._write(w1, w2, s1, s2, part(k), part(v),
                                       *_chunk_rates(part(lr), part(log_eta), part(log_keep)))
    expected = memory.out_proj(torch.cat(reads, dim=1)[:, :14])
    expected_grads = torch.autograd.grad((expected * weight).sum(), [hidden, *memory.parameters()])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    for actual, reference in zip(got_grads, expected_grads):
        torch.testing.assert_close(actual, reference, rtol=1e-4, atol=1e-6)


def saved_for_backward(model, *args, **kwargs) -> list[torch.Size]:
    """Shapes of the tensors autograd keeps for backward while ``model(*args)`` runs (outside checkpoints)."""
    shapes = []

    def pack(tensor):
        shapes.append(tensor.shape)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(*args, **kwargs)
    return shapes


def test_memory_keeps_no_chunk_by_slot_intermediates_for_backward():
    hidden = torch.randn(2, 16, 32, requires_grad=True)
    stored = saved_for_backward(NeuralMemory(config(ltm_slots=64)), hidden, None)
    assert [s for s in stored if 64 in s and 4 in s]  # without checkpointing they are kept
    memory = NeuralMemory(config(ltm_slots=64, activation_checkpointing="layer"))
    shapes = saved_for_backward(memory, hidden, None)
    assert shapes, "the projections' inputs are kept"
    # the (B, slots, dim) fast weights between chunks are kept; nothing of shape (B, chunk=4, slots=64)
    assert any(tuple(s) == (2, 64, 8) for s in shapes)
    assert not [s for s in shapes if 64 in s and 4 in s], shapes


@pytest.mark.parametrize("mode", ["layer", "stack"])
def test_checkpointed_forward_keeps_only_pass_inputs(mode):
    ids, mask = batch()
    torch.manual_seed(0)
    plain = saved_for_backward(CognateForCausalLM(config()).train(), ids, attention_mask=mask, labels=ids)
    torch.manual_seed(0)
    kept = saved_for_backward(CognateForCausalLM(config(activation_checkpointing=mode)).train(), ids,
                              attention_mask=mask, labels=ids)
    numel = lambda shapes: sum(torch.Size(s).numel() for s in shapes)  # noqa: E731
    # the SwiGLU's (B, n, intermediate) activations are among what a plain forward keeps, and no longer kept
    assert any(len(s) == 3 and s[-1] == 64 for s in plain)
    assert not any(len(s) == 3 and s[-1] == 64 for s in kept)
    assert numel(kept) < numel(plain) / 4


def test_bad_activation_checkpointing_is_rejected():
    with pytest.raises(ValueError, match="activation_checkpointing must be one of"):
        config(activation_checkpointing="layers")


def test_checkpointed_model_saves_and_loads_with_identical_logits(tmp_path):
    torch.manual_seed(0)
    model = CognateForCausalLM(config(activation_checkpointing="layer")).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.activation_checkpointing == "layer"
    ids, mask = batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits,
                                   rtol=0, atol=0)
