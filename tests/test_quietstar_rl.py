"""Quiet-STaR Step 2 on tiny Llama and Cognate models: loss and gradients, rewards into REINFORCE,
rollback on a theater model, resume, the mixing head file."""
import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from forge.baking.hidden import final_hidden
from forge.data.tokenizer import train_bpe_tokenizer
from forge.models import CognateConfig, CognateForCausalLM
from forge.quietstar import MixingHead, add_thinking_tokens, thought_rewards
from forge.quietstar.rewards import DIVERGENCE_THRESHOLD
from forge.quietstar.rl import (CHECKPOINT, FIRST_RAISED_THRESHOLD, ThinkIds, ThoughtRLConfig, episode_loss,
                                heldout_check_items, load_mixing_head, sample_thoughts, save_mixing_head,
                                score_thoughts, train_thoughts)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = [f"question {i}: what is {i} plus {3 * i}? the answer is {4 * i}." for i in range(120)]
TRAIN, HELDOUT = TEXTS[:100], TEXTS[100:]
# Small and fast: 2 sequences x 2 positions x 3 thoughts of 4 tokens per episode.
SMALL = dict(seq_len=24, batch_size=2, positions_per_sequence=2, num_thoughts=3, thought_tokens=4, n_true=3,
             check_items=4)
# Thresholds every measured value passes (a nan correlation still fails): exercises the passing path.
LENIENT = dict(divergence_threshold=-1.0, ablation_threshold=-1.5, correlation_threshold=-1.5)


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(TEXTS, vocab_size=300)


def tiny_llama(tokenizer, seed=0):
    # vocab_size excludes added tokens: every model gets its thinking-token rows from add_thinking_tokens.
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        vocab_size=tokenizer.vocab_size, max_position_embeddings=128, tie_word_embeddings=False, bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)).eval()
    add_thinking_tokens(model, tokenizer)
    return model


def tiny_cognate(tokenizer, seed=0):
    torch.manual_seed(seed)
    model = CognateForCausalLM(CognateConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, sliding_window=64, memory_chunk_size=16, ltm_slots=16, memory_dim=8,
        act_max_steps=2, trm_refinements=1,
        pad_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id)).eval()
    add_thinking_tokens(model, tokenizer)
    return model


def batch_of(tokenizer, rows=2, length=24):
    ids = [tokenizer(text)["input_ids"] for text in TRAIN[:rows * 4]]
    stream = [token for row in ids for token in row + [tokenizer.eos_token_id]]
    return torch.tensor(stream[:rows * length]).view(rows, length)


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("build", [tiny_llama, tiny_cognate])
def test_episode_loss_is_finite_and_its_gradient_reaches_model_and_mixing_head(tokenizer, build):
    model = build(tokenizer)
    reference = copy.deepcopy(model).requires_grad_(False)
    head = MixingHead(32)
    think = ThinkIds.of(tokenizer)
    batch = batch_of(tokenizer)
    positions = [5, 12]
    generator = torch.Generator().manual_seed(0)
    thoughts = [sample_thoughts(model, batch[:, :p + 1].repeat_interleave(3, 0), think, 4, 1.0, generator)
                .view(2, 3, 4) for p in positions]
    for thought in thoughts:  # the wrapper tokens never appear inside a thought
        assert not bool(torch.isin(thought, torch.tensor([think.start, think.end])).any())
    loss = episode_loss(model, head, reference, batch, positions, thoughts, think, n_true=3, temperature=1.0,
                        kl_coefficient=0.1, reward_threshold=0.0)
    assert torch.isfinite(loss.total)
    assert torch.allclose(loss.total, loss.nll + loss.reinforce + 0.1 * loss.kl)
    assert abs(loss.kl.item()) < 1e-5  # model == reference at the start
    assert loss.metrics["rl/mixing_weight"] == pytest.approx(0.05, abs=1e-6)
    loss.total.backward()
    q_proj = next(m for name, m in model.named_modules() if name.endswith("q_proj"))
    assert q_proj.weight.grad is not None and q_proj.weight.grad.abs().sum() > 0
    assert model.get_input_embeddings().weight.grad.abs().sum() > 0
    # The head's output layer starts at zero, so its gradient (not the first layer's) is the live one.
    assert head.mlp[2].weight.grad.abs().sum() > 0 and head.mlp[2].bias.grad.abs() > 0
    assert all(p.grad is None for p in reference.parameters())


def test_rewards_flow_into_reinforce_and_raise_the_reinforced_thought(tokenizer):
    model = tiny_llama(tokenizer)
    head = MixingHead(32, init_weight=0.5)  # thoughts weigh half: their rewards differ clearly
    think = ThinkIds.of(tokenizer)
    batch = batch_of(tokenizer, rows=1)
    position = 10
    answer = tokenizer(" the answer is", add_special_tokens=False)["input_ids"][:4]
    noise = tokenizer(" q? 7 plus:", add_special_tokens=False)["input_ids"][:4]
    thoughts = torch.tensor([[answer + [answer[0]] * (4 - len(answer)), noise + [noise[0]] * (4 - len(noise))]])

    def terms(threshold):
        return episode_loss(model, head, model, batch, [position], [thoughts], think, n_true=3, temperature=1.0,
                            kl_coefficient=0.0, reward_threshold=threshold)

    def thought_logp():
        with torch.no_grad():
            scores = score_thoughts(model, head, batch[:, :position + 1], batch[:, position + 1:position + 4],
                                    thoughts, think, 1.0)
        return scores.thought_logp[0], scores.logp_mixed

    before, logp_mixed = thought_logp()
    rewards = thought_rewards(logp_mixed.unsqueeze(1))[0, 0]
    winner = int(rewards.argmax())
    assert rewards[winner] > 0 and rewards[1 - winner] < 0
    # Above every reward nothing is reinforced: the term and its gradient vanish.
    silent = terms(threshold=1e6)
    assert silent.reinforce.item() == 0.0
    live = terms(threshold=0.0)
    # Only the winner is reinforced: -r_w * log p(T_w) / N with N = 2 thoughts.
    assert live.reinforce.item() == pytest.approx(-(rewards[winner] * before[winner]).item() / 2, rel=1e-4)
    optimizer = torch.optim.SGD(model.parameters(), lr=50.0)
    optimizer.zero_grad()
    live.reinforce.backward()
    optimizer.step()
    after, _ = thought_logp()
    assert after[winner] > before[winner] + 0.01, (before, after)


def make_theater(model, tokenizer):
    """Make ``model`` (a Llama) ignore its input and always pick one token with a margin of ~50 logits:
    every sampled thought then equals the direct greedy continuation (divergence 0, theater)."""
    with torch.no_grad():
        embedding = model.get_input_embeddings().weight
        embedding.copy_(embedding[1].expand_as(embedding))  # every token looks alike: constant hidden states
        hidden = final_hidden(model, torch.tensor([[1, 2, 3]]))[0, 0]
        chosen = tokenizer("q", add_special_tokens=False)["input_ids"][0]
        model.get_output_embeddings().weight[chosen] += 50.0 * hidden / hidden.norm().square()
    return model


def theater_model(tokenizer):
    return make_theater(tiny_llama(tokenizer), tokenizer)


def test_failing_check_rolls_back_exactly_raises_coefficients_and_stops_after_max_rollbacks(tokenizer, tmp_path):
    model = theater_model(tokenizer)
    start = copy.deepcopy(model.state_dict())
    trained_at_check = []

    def log(row):
        if "anti_theater/divergence" in row:  # logged before the rollback: the weights the check judged
            trained_at_check.append(states_equal(model.state_dict(), start))

    config = ThoughtRLConfig(episodes=5, check_every=1, max_rollbacks=2, **SMALL)
    report = train_thoughts(model, tokenizer, TRAIN, HELDOUT, config, checkpoint_dir=tmp_path, log=log)

    assert report.stopped_reason == "max_rollbacks"
    assert trained_at_check == [False, False]  # a step really changed the weights before each check
    assert states_equal(model.state_dict(), start)  # ... and each rollback restored the start exactly
    assert [check["divergence"] for check in report.checks] == [0.0, 0.0]
    assert not any(check["passed"] for check in report.checks)
    assert [(r["episode"], r["restored_episode"]) for r in report.rollbacks] == [(1, 0), (1, 0)]
    assert [r["kl_coefficient"] for r in report.rollbacks] == pytest.approx([0.2, 0.4])
    assert [r["reward_threshold"] for r in report.rollbacks] == pytest.approx(
        [FIRST_RAISED_THRESHOLD, 1.5 * FIRST_RAISED_THRESHOLD])
    assert (report.kl_coefficient, report.episodes, report.optimizer_steps) == (pytest.approx(0.4), 0, 2)
    saved = torch.load(tmp_path / CHECKPOINT, weights_only=False)
    assert saved["episode"] == 0 and states_equal(saved["model"], start)
    assert states_equal(saved["mixing_head"], report.mixing_head.state_dict())
    assert saved["run"]["kl_coefficient"] == pytest.approx(0.4)
    # Resuming a run that already used up its rollbacks does no more work.
    again = train_thoughts(theater_model(tokenizer), tokenizer, TRAIN, HELDOUT, config, checkpoint_dir=tmp_path)
    assert (again.stopped_reason, again.optimizer_steps, len(again.rollbacks)) == ("max_rollbacks", 2, 2)


def test_a_failing_check_after_a_passing_one_restores_the_passing_checkpoint(tokenizer):
    model = tiny_llama(tokenizer)
    start = copy.deepcopy(model.state_dict())
    at_checks = []

    def log(row):
        if "anti_theater/divergence" in row:
            at_checks.append(copy.deepcopy(model.state_dict()))
        elif row.get("rl/episode") == 2 and "rl/loss" in row:  # after the passing check: turn to theater
            make_theater(model, tokenizer)

    config = ThoughtRLConfig(episodes=2, check_every=1, max_rollbacks=1, **SMALL,
                             **{**LENIENT, "divergence_threshold": DIVERGENCE_THRESHOLD})
    report = train_thoughts(model, tokenizer, TRAIN, HELDOUT, config, log=log)
    assert [c["passed"] for c in report.checks] == [True, False]
    assert report.checks[1]["divergence"] == 0.0
    assert report.rollbacks[0]["episode"] == 2 and report.rollbacks[0]["restored_episode"] == 1
    assert states_equal(model.state_dict(), at_checks[0]) and not states_equal(model.state_dict(), start)
    assert report.stopped_reason == "max_rollbacks" and report.episodes == 1


@pytest.mark.parametrize("build", [tiny_llama, tiny_cognate])
def test_resume_from_checkpoint_equals_an_uninterrupted_run(tokenizer, tmp_path, build):
    config = ThoughtRLConfig(episodes=4, check_every=2, **SMALL, **LENIENT)
    whole_model = build(tokenizer)
    whole = train_thoughts(whole_model, tokenizer, TRAIN, HELDOUT, config, checkpoint_dir=tmp_path / "whole")
    assert whole.stopped_reason == "completed" and whole.episodes == 4 and not whole.rollbacks
    assert [c["passed"] for c in whole.checks] == [True, True]

    first_model = build(tokenizer)
    first = train_thoughts(first_model, tokenizer, TRAIN, HELDOUT, ThoughtRLConfig(episodes=2, check_every=2, **SMALL,
                                                                                   **LENIENT),
                           checkpoint_dir=tmp_path / "split")
    assert first.episodes == 2
    resumed_model = build(tokenizer)  # the "killed" process restarts from the Step 1 model
    resumed = train_thoughts(resumed_model, tokenizer, TRAIN, HELDOUT, config, checkpoint_dir=tmp_path / "split")
    assert resumed.optimizer_steps == 4 and resumed.history == whole.history and resumed.checks == whole.checks
    assert states_equal(resumed_model.state_dict(), whole_model.state_dict())
    assert states_equal(resumed.mixing_head.state_dict(), whole.mixing_head.state_dict())
    assert not states_equal(whole_model.state_dict(), build(tokenizer).state_dict())  # it did train
    with pytest.raises(ValueError, match="num_thoughts"):
        train_thoughts(build(tokenizer), tokenizer, TRAIN, HELDOUT,
                       ThoughtRLConfig(episodes=4, check_every=2, **{**SMALL, "num_thoughts": 2}, **LENIENT),
                       checkpoint_dir=tmp_path / "split")


def test_the_same_seed_gives_the_same_mixing_head_whatever_the_process_drew_before(tokenizer):
    config = ThoughtRLConfig(episodes=1, check_every=2, **SMALL, **LENIENT)
    heads = []
    for earlier in (1, 2):  # the global RNG in two different states, as after different earlier work
        model = tiny_llama(tokenizer)
        torch.manual_seed(earlier)
        heads.append(train_thoughts(model, tokenizer, TRAIN, HELDOUT, config).mixing_head.state_dict())
    assert states_equal(*heads)


def test_heldout_items_split_pairs_at_the_prompt_and_texts_inside(tokenizer):
    config = ThoughtRLConfig(**SMALL)
    pair, text = heldout_check_items(tokenizer, [("what is 2 plus 6? the answer is", " 8, so 8 it is."),
                                                 HELDOUT[0]], config)
    assert list(pair.context) == tokenizer("what is 2 plus 6? the answer is")["input_ids"]
    assert list(pair.truth) == tokenizer(" 8, so 8 it is.")["input_ids"][:config.n_true]
    whole = tokenizer(HELDOUT[0])["input_ids"]
    joined = list(text.context + text.truth)
    assert text.context and text.truth and joined == whole[:len(joined)]
    assert len(heldout_check_items(tokenizer, HELDOUT, config)) == config.check_items
    with pytest.raises(ValueError, match="empty"):
        heldout_check_items(tokenizer, [("question", "")], config)


def test_mixing_head_file_round_trip(tmp_path):
    head = MixingHead(16)
    torch.nn.init.normal_(head.mlp[2].weight)
    path = save_mixing_head(head, tmp_path / "mixing_head.safetensors")
    loaded = load_mixing_head(path)
    assert states_equal(loaded.state_dict(), head.state_dict())
    with pytest.raises(FileNotFoundError, match="mixing head"):
        load_mixing_head(tmp_path / "missing.safetensors")


def test_bad_settings_and_data_are_named(tokenizer):
    with pytest.raises(ValueError, match="num_thoughts"):
        ThoughtRLConfig(num_thoughts=1)
    with pytest.raises(ValueError, match="seq_len"):
        ThoughtRLConfig(seq_len=6, n_true=4, positions_per_sequence=4)
    with pytest.raises(ValueError, match="seq_len"):
        train_thoughts(tiny_llama(tokenizer), tokenizer, ["too short"], HELDOUT, ThoughtRLConfig(**SMALL))
    with pytest.raises(ValueError, match="add_thinking_tokens"):
        train_thoughts(tiny_llama(tokenizer), train_bpe_tokenizer(TEXTS, vocab_size=280), TRAIN, HELDOUT,
                       ThoughtRLConfig(**SMALL))
