"""MuonGrokfast against the formulas written out here by hand (Muon, Newton-Schulz, AdamW, Grokfast, QK-clip)."""
import copy
import io
import math

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from forge.optim import MuonGrokfast, MuonGrokfastConfig, build_muon_grokfast, newton_schulz5, split_parameters

A, B, C = 3.4445, -4.7750, 2.0315


def hand_newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """X <- aX + b(XX^T)X + c(XX^T)^2 X on the wide orientation of G/||G||_F."""
    tall = g.shape[0] > g.shape[1]
    x = g.T if tall else g
    x = x / x.norm()
    for _ in range(steps):
        xxt = x @ x.T
        x = A * x + B * xxt @ x + C * xxt @ xxt @ x
    return x.T if tall else x


def tiny_llama(tie: bool = False, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, vocab_size=64, tie_word_embeddings=tie,
    ))


class ToyAttention(nn.Module):
    """Single-head attention logits that record max_attn_logit the way the Cognate attention does."""

    def __init__(self, dim: int = 8, bias: bool = False) -> None:
        super().__init__()
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(dim, dim, bias=bias)
        self.max_attn_logit = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.q_proj(x) @ self.k_proj(x).transpose(-1, -2) / math.sqrt(x.shape[-1])
        self.max_attn_logit = float(logits.detach().max())
        return logits


@pytest.mark.parametrize("shape", [(3, 5), (5, 3)])
def test_muon_two_steps_match_hand_nesterov_newton_schulz(shape):
    rows, cols = shape
    w0 = (torch.arange(rows * cols, dtype=torch.float32).reshape(rows, cols) - 7) / 10
    g1 = torch.sin(torch.arange(rows * cols, dtype=torch.float32)).reshape(rows, cols)
    g2 = torch.cos(torch.arange(rows * cols, dtype=torch.float32) * 0.7).reshape(rows, cols)
    lr, wd, mu = 0.02, 0.1, 0.95
    param = nn.Parameter(w0.clone())
    config = MuonGrokfastConfig(muon_lr=lr, weight_decay=wd, momentum=mu, grokfast_lambda=0.0)
    opt = MuonGrokfast([{"params": [param], "use_muon": True}], config)

    scale = 0.2 * math.sqrt(max(rows, cols))
    w, buf = w0.clone(), torch.zeros_like(w0)
    for g in (g1, g2):
        param.grad = g.clone()
        opt.step()
        buf = mu * buf + g
        nesterov = g + mu * buf
        w = w * (1 - lr * wd) - lr * scale * hand_newton_schulz(nesterov)
        torch.testing.assert_close(param.data, w, rtol=1e-5, atol=1e-6)


def test_muon_flattens_higher_dim_tensors():
    w0 = torch.randn(4, 2, 3)
    g = torch.randn(4, 2, 3)
    param = nn.Parameter(w0.clone())
    opt = MuonGrokfast([{"params": [param], "use_muon": True}],
                       MuonGrokfastConfig(muon_lr=0.01, weight_decay=0.0, nesterov=False, grokfast_lambda=0.0))
    param.grad = g.clone()
    opt.step()
    expected = w0 - 0.01 * 0.2 * math.sqrt(6) * hand_newton_schulz(g.reshape(4, 6)).reshape(4, 2, 3)
    torch.testing.assert_close(param.data, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (48, 48), (128, 16)])
def test_newton_schulz_singular_values_in_quintic_band(shape):
    torch.manual_seed(1)
    g = torch.randn(*shape)
    out = newton_schulz5(g, steps=5)
    sv = torch.linalg.svdvals(out)
    assert sv.min() > 0.65 and sv.max() < 1.21, (sv.min().item(), sv.max().item())
    # Same singular vectors as the exact orthogonal factor U V^T.
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    cosine = (out * (u @ vh)).sum() / (out.norm() * (u @ vh).norm())
    assert cosine > 0.98


def test_adamw_groups_match_torch_adamw_exactly_without_grokfast():
    model = tiny_llama()
    reference = copy.deepcopy(model)
    config = MuonGrokfastConfig(adam_lr=3e-3, weight_decay=0.05, adam_betas=(0.8, 0.99), adam_eps=1e-7,
                                grokfast_lambda=0.0)
    opt = build_muon_grokfast(model, config)
    split = split_parameters(reference)
    torch_adamw = torch.optim.AdamW(
        [{"params": [p for _, p in split["adamw_decay"]], "weight_decay": 0.05},
         {"params": [p for _, p in split["adamw_no_decay"]], "weight_decay": 0.0}],
        lr=3e-3, betas=(0.8, 0.99), eps=1e-7, foreach=False,
    )
    adam_names = [n for key in ("adamw_decay", "adamw_no_decay") for n, _ in split[key]]
    params, ref_params = dict(model.named_parameters()), dict(reference.named_parameters())
    generator = torch.Generator().manual_seed(3)
    for _ in range(3):
        for name, p in params.items():
            grad = torch.randn(p.shape, generator=generator)
            p.grad = grad.clone()
            ref_params[name].grad = grad.clone()
        opt.step()
        torch_adamw.step()
        for name in adam_names:
            assert torch.equal(params[name], ref_params[name]), name
        assert not torch.equal(params[adam_names[0]], dict(tiny_llama().named_parameters())[adam_names[0]])


def test_grokfast_filter_matches_hand_loop_over_three_steps():
    alpha, lam, lr, mu = 0.9, 0.5, 0.01, 0.9
    torch.manual_seed(2)
    vec0, mat0 = torch.randn(6), torch.randn(4, 5)
    vec, mat = nn.Parameter(vec0.clone()), nn.Parameter(mat0.clone())
    config = MuonGrokfastConfig(muon_lr=lr, adam_lr=lr, momentum=mu, weight_decay=0.0,
                                grokfast_alpha=alpha, grokfast_lambda=lam)
    opt = MuonGrokfast([{"params": [mat], "use_muon": True}, {"params": [vec], "use_muon": False}], config)
    # Reference: the hand filter feeding torch AdamW (vector) and hand Muon (matrix).
    ref_vec = nn.Parameter(vec0.clone())
    ref_adamw = torch.optim.AdamW([ref_vec], lr=lr, betas=config.adam_betas, eps=config.adam_eps,
                                  weight_decay=0.0, foreach=False)
    ema_vec = ema_mat = None
    w, buf = mat0.clone(), torch.zeros_like(mat0)
    for step in range(3):
        g_vec, g_mat = torch.randn(6), torch.randn(4, 5)
        vec.grad, mat.grad = g_vec.clone(), g_mat.clone()
        opt.step()
        # Grokfast reference code starts the EMA at the first gradient.
        ema_vec = g_vec if ema_vec is None else alpha * ema_vec + (1 - alpha) * g_vec
        ema_mat = g_mat if ema_mat is None else alpha * ema_mat + (1 - alpha) * g_mat
        ref_vec.grad = g_vec + lam * ema_vec
        ref_adamw.step()
        filtered = g_mat + lam * ema_mat
        buf = mu * buf + filtered
        w = w - lr * 0.2 * math.sqrt(5) * hand_newton_schulz(filtered + mu * buf)
        torch.testing.assert_close(opt.state[vec]["grokfast_ema"], ema_vec)
        torch.testing.assert_close(opt.state[mat]["grokfast_ema"], ema_mat)
        torch.testing.assert_close(vec.data, ref_vec.data, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(mat.data, w, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(vec.grad, g_vec)  # p.grad itself is not overwritten


@pytest.mark.parametrize("bias", [False, True])
def test_qk_clip_scales_q_and_k_by_sqrt_threshold_over_max(bias):
    torch.manual_seed(4)
    attn = ToyAttention(bias=bias)
    x = torch.randn(6, 8) * 20
    logit = attn(x).max().item()
    assert logit > 5.0
    threshold = logit / 4
    opt = MuonGrokfast([{"params": list(attn.parameters()), "use_muon": False}],
                       MuonGrokfastConfig(qk_clip_threshold=threshold), qk_clip_modules=[attn])
    q0, k0 = attn.q_proj.weight.clone(), attn.k_proj.weight.clone()
    opt.step()  # no gradients: only QK-clip acts
    factor = math.sqrt(threshold / logit)
    torch.testing.assert_close(attn.q_proj.weight.data, q0 * factor)
    torch.testing.assert_close(attn.k_proj.weight.data, k0 * factor)
    assert opt.last_qk_clip["qk_clips"] == 1 and opt.last_qk_clip["max_attn_logit"] == pytest.approx(logit)
    assert attn(x).max().item() == pytest.approx(threshold, rel=1e-4)
    # Now at (not above) the threshold: left alone.
    q1 = attn.q_proj.weight.clone()
    opt.step()
    assert torch.equal(attn.q_proj.weight, q1) and opt.last_qk_clip["qk_clips"] == 0
    assert opt.qk_clips_total == 1


def test_qk_clip_leaves_weights_alone_below_threshold_and_when_disabled():
    torch.manual_seed(5)
    attn = ToyAttention()
    logit = attn(torch.randn(6, 8)).max().item()
    for threshold in (logit * 1.01, None):
        opt = MuonGrokfast([{"params": list(attn.parameters()), "use_muon": False}],
                           MuonGrokfastConfig(qk_clip_threshold=threshold), qk_clip_modules=[attn])
        q0, k0 = attn.q_proj.weight.clone(), attn.k_proj.weight.clone()
        stats = opt.apply_qk_clip()
        assert stats["qk_clips"] == 0
        assert torch.equal(attn.q_proj.weight, q0) and torch.equal(attn.k_proj.weight, k0)


def test_build_discovers_qk_clip_modules_and_clips_during_training():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(8, 8), ToyAttention(), ToyAttention())
    opt = build_muon_grokfast(model, MuonGrokfastConfig(qk_clip_threshold=1e-3, grokfast_lambda=0.0))
    assert opt.qk_clip_modules == [model[1], model[2]]
    x = torch.randn(5, 8)
    h = model[0](x)
    loss = model[1](h).pow(2).mean() + model[2](h).pow(2).mean()
    loss.backward()
    opt.step()
    assert opt.last_qk_clip["qk_clips"] == 2
    # The clip uses the logit of the step's own forward, so after that step's update it is near, not at, t.
    for attn in (model[1], model[2]):
        assert attn(h).max().item() == pytest.approx(1e-3, rel=0.05)
    assert build_muon_grokfast(tiny_llama()).qk_clip_modules == []


def _train_steps(model, opt, batches):
    losses = []
    for batch in batches:
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def test_state_dict_round_trip_gives_identical_next_steps():
    torch.manual_seed(7)
    batches = [torch.randint(0, 64, (2, 12)) for _ in range(6)]
    config = MuonGrokfastConfig(muon_lr=0.02, adam_lr=0.01)
    model = tiny_llama()
    opt = build_muon_grokfast(model, config)
    _train_steps(model, opt, batches[:3])
    for group in opt.param_groups:
        group["lr"] *= 0.5  # a rollback lowering the rate must survive the checkpoint
    opt.qk_clips_total = 3
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)

    resumed = tiny_llama(seed=99)
    resumed.load_state_dict(checkpoint["model"])
    resumed_opt = build_muon_grokfast(resumed, config)
    resumed_opt.load_state_dict(checkpoint["opt"])
    assert [g["lr"] for g in resumed_opt.param_groups] == [g["lr"] for g in opt.param_groups]
    assert resumed_opt.qk_clips_total == 3

    assert _train_steps(model, opt, batches[3:]) == _train_steps(resumed, resumed_opt, batches[3:])
    for (name, p), q in zip(model.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), name


def test_tiny_llama_loss_goes_down_in_30_steps():
    torch.manual_seed(8)
    model = tiny_llama()
    batch = torch.randint(0, 64, (4, 16))
    opt = build_muon_grokfast(model, MuonGrokfastConfig(muon_lr=0.02, adam_lr=0.01))
    losses = _train_steps(model, opt, [batch] * 30)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("tie", [False, True])
def test_split_on_tiny_llama(tie):
    model = tiny_llama(tie=tie)
    split = {k: [n for n, _ in v] for k, v in split_parameters(model).items()}
    head = [] if tie else ["lm_head.weight"]
    assert split["adamw_decay"] == ["model.embed_tokens.weight"] + head
    assert all("norm" in n for n in split["adamw_no_decay"]) and len(split["adamw_no_decay"]) == 5
    projections = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert sorted(split["muon"]) == sorted(f"model.layers.{i}.{'self_attn' if p[0] in 'qkvo' else 'mlp'}.{p}.weight"
                                           for i in range(2) for p in projections)
    opt = build_muon_grokfast(model, MuonGrokfastConfig(muon_lr=2e-3, adam_lr=5e-4, weight_decay=0.1))
    in_groups = [p for g in opt.param_groups for p in g["params"]]
    assert len(in_groups) == len({id(p) for p in in_groups}) == len(list(model.parameters()))
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["muon"]["use_muon"] and by_name["muon"]["lr"] == 2e-3
    assert by_name["adamw_decay"]["lr"] == 5e-4 and by_name["adamw_decay"]["weight_decay"] == 0.1
    assert by_name["adamw_no_decay"]["weight_decay"] == 0.0


def test_split_on_gpt2_conv1d_and_position_embeddings():
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=64, n_positions=32))
    split = {k: [n for n, _ in v] for k, v in split_parameters(model).items()}
    assert split["adamw_decay"] == ["transformer.wte.weight", "transformer.wpe.weight"]  # head tied to wte
    assert all(n.endswith(".weight") and ("attn" in n or "mlp" in n) for n in split["muon"])
    assert len(split["muon"]) == 8
    assert all(n.endswith(".bias") or "ln_" in n for n in split["adamw_no_decay"])


def test_frozen_parameters_are_left_out():
    model = tiny_llama()
    model.model.embed_tokens.weight.requires_grad_(False)
    names = [n for v in split_parameters(model).values() for n, _ in v]
    assert "model.embed_tokens.weight" not in names and "lm_head.weight" in names


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="grokfast_alpha"):
        MuonGrokfastConfig(grokfast_alpha=1.0)
    with pytest.raises(ValueError, match="qk_clip_threshold"):
        MuonGrokfastConfig(qk_clip_threshold=0.0)
    with pytest.raises(ValueError, match="muon_lr"):
        MuonGrokfastConfig(muon_lr=0.0)
    with pytest.raises(ValueError, match="0-D/1-D"):
        MuonGrokfast([{"params": [nn.Parameter(torch.zeros(3))], "use_muon": True}])
    with pytest.raises(ValueError, match="use_muon"):
        MuonGrokfast([{"params": [nn.Parameter(torch.zeros(3))]}])
    with pytest.raises(ValueError, match="q_proj"):
        MuonGrokfast([{"params": [nn.Parameter(torch.zeros(3))], "use_muon": False}],
                     qk_clip_modules=[nn.Linear(2, 2)])
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_muon_grokfast(frozen)
