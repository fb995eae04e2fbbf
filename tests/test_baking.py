"""Prompt baking on tiny GPT-2, Llama and Cognate models: frozen teacher, falling KL, half-bakes, files."""
from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from forge.artifacts import (
    ArtifactError,
    load_model_dir,
    read_manifest,
    save_model_dir,
    state_dict_hash,
    verify_model_dir,
)
from forge.baking.__main__ import main as bake_main
from forge.baking import (
    BakingConfig,
    NothingToBake,
    bake_prompt,
    bake_sequence,
    bake_together,
    base_weights_hash,
    export_merged,
    find_lora_targets,
    load_adapter,
    load_inputs,
    pursue_prompt,
    sample_trajectories,
    save_adapter,
    stack_bakes,
    strength_fraction,
    Trajectory,
)
from forge.baking.hidden import final_hidden
from forge.baking.kl import batch_kl_sum, fixed, kl_backward, plain, reference_ce_backward, teacher_states
from forge.baking.trajectories import collate, encode_contexts
from forge.data.tokenizer import train_bpe_tokenizer

PROMPT = "answer like a pirate, arr arr arr. "
INPUTS = [f"question {i}: what is {i} plus {i + 1}?" for i in range(10)]
# Small and fast; a large LR so a few steps move the tiny models measurably. Epochs mode: these tests
# check the schedule itself (target-strength baking is tested in test_halfbake.py).
CONFIG = BakingConfig(lora_r=4, lora_alpha=8, learning_rate=1e-2, max_new_tokens=8, samples_per_input=2,
                      batch_size=4, heldout_fraction=0.2, mode="epochs")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer():
    texts = [f"question {i}: what is {i} plus {3 * i}? the answer is {4 * i}, arr." for i in range(200)]
    return train_bpe_tokenizer(texts, vocab_size=300)


def tiny_llama(tokenizer, seed=0):
    torch.manual_seed(seed)
    # A wide init makes the random model's predictions peaked enough that the prompt matters.
    return LlamaForCausalLM(LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        vocab_size=len(tokenizer), max_position_embeddings=128, initializer_range=0.2, bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)).eval()


def tiny_gpt2(tokenizer, seed=0):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(
        n_embd=32, n_layer=2, n_head=2, vocab_size=len(tokenizer), n_positions=128, initializer_range=0.2,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)).eval()


def logits_of(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def test_lora_targets_per_architecture(tokenizer):
    assert find_lora_targets(tiny_gpt2(tokenizer)) == ["c_attn", "c_fc", "c_proj"]
    assert find_lora_targets(tiny_llama(tokenizer)) == [
        "down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def test_generated_tokens_are_the_only_scored_positions(tokenizer):
    model = tiny_llama(tokenizer)
    trajectories = sample_trajectories(model, tokenizer, PROMPT, INPUTS[:3], CONFIG, torch.Generator().manual_seed(0))
    assert len(trajectories) == 3 * CONFIG.samples_per_input
    batch = collate(trajectories, tokenizer.eos_token_id, torch.device("cpu"))
    assert batch.num_tokens == sum(len(t.generated) for t in trajectories)
    for row, traj in enumerate(trajectories):
        for ids, mask, ctx in ((batch.teacher_ids, batch.teacher_mask, traj.teacher_context),
                               (batch.student_ids, batch.student_mask, traj.student_context)):
            positions = mask[row].nonzero().squeeze(1)
            assert positions[0] == len(ctx) - 1  # the first scored position predicts the first new token
            assert positions.tolist() == list(range(len(ctx) - 1, len(ctx) - 1 + len(traj.generated)))
            # each scored position's next input token is the next generated one
            assert tuple(ids[row, positions[:-1] + 1].tolist()) == traj.generated[:-1]
        assert len(traj.teacher_context) > len(traj.student_context)  # the prompt is in the teacher's only


def tiny_cognate(tokenizer, seed=0):
    from forge.models import CognateConfig, CognateForCausalLM

    torch.manual_seed(seed)
    return CognateForCausalLM(CognateConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, sliding_window=64, memory_chunk_size=16, ltm_slots=16, memory_dim=8,
        act_max_steps=2, trm_refinements=1, initializer_range=0.2, pad_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)).eval()


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama, tiny_cognate])
def test_right_padding_without_mask_leaves_scored_positions_exact(tokenizer, build):
    model = build(tokenizer)
    trajectories = sample_trajectories(model, tokenizer, PROMPT, [INPUTS[0], "q"], CONFIG,
                                       torch.Generator().manual_seed(0))
    batch = collate(trajectories, tokenizer.eos_token_id, torch.device("cpu"))
    with torch.no_grad():
        padded = final_hidden(model, batch.student_ids)[batch.student_mask]
        alone = [final_hidden(model, collate([t], 0, torch.device("cpu")).student_ids)[0] for t in trajectories]
    rows = [h[len(t.student_context) - 1:len(t.student_context) - 1 + len(t.generated)]
            for h, t in zip(alone, trajectories)]
    torch.testing.assert_close(padded, torch.cat(rows), rtol=1e-4, atol=1e-5)


def test_empty_input_gives_the_student_a_start_token(tokenizer):
    teacher, student = encode_contexts(tokenizer, PROMPT, "")
    assert student == [tokenizer.eos_token_id]  # this tokenizer has no BOS of its own; EOS starts a text
    assert teacher == tokenizer(PROMPT)["input_ids"]
    with pytest.raises(ValueError, match="prompt is empty"):
        encode_contexts(tokenizer, "", INPUTS[0])


def test_sampling_batches_inputs_of_one_length_without_changing_a_trajectory(tokenizer, monkeypatch):
    import forge.baking.trajectories as trajectories_module

    model = tiny_gpt2(tokenizer)
    inputs = ["hi", "question 1: what?", "a b", "question 2: what?", "question 33: what is it?"]
    config = dataclasses.replace(CONFIG, temperature=0.0, samples_per_input=2, max_new_tokens=5)

    def sample():
        return sample_trajectories(model, tokenizer, PROMPT, inputs, config, torch.Generator().manual_seed(0))

    batched = sample()
    monkeypatch.setattr(trajectories_module, "SAMPLE_BATCH_ROWS", 1)  # one input per batch
    alone = sample()
    assert batched == alone
    # In input order, two samples each, every one with its own input's contexts.
    assert [t.student_context for t in batched] == [tuple(encode_contexts(tokenizer, PROMPT, text)[1])
                                                    for text in inputs for _ in range(2)]
    assert len({len(t.teacher_context) for t in batched}) < len(inputs)  # some inputs did share a batch


def test_chunked_kl_and_gradient_match_full_logits(tokenizer):
    teacher, student = tiny_llama(tokenizer, seed=0), tiny_llama(tokenizer, seed=1)
    trajectories = sample_trajectories(teacher, tokenizer, PROMPT, INPUTS[:2], CONFIG, torch.Generator().manual_seed(0))
    batch = collate(trajectories, tokenizer.eos_token_id, torch.device("cpu"))
    t_logp = F.log_softmax(logits_of(teacher, batch.teacher_ids)[batch.teacher_mask], -1)
    s_logp = F.log_softmax(student(input_ids=batch.student_ids).logits[batch.student_mask], -1)
    full = (t_logp.exp() * (t_logp - s_logp)).sum()
    for chunk in (1, 5, 10_000):
        assert batch_kl_sum(plain(teacher), plain(student), batch, chunk) == pytest.approx(full.item(), rel=1e-4)
    (full / batch.num_tokens).backward()
    expected = {n: p.grad.clone() for n, p in student.named_parameters()}
    student.zero_grad()
    value = kl_backward(plain(teacher), student, batch, chunk=3)
    assert value == pytest.approx(full.item() / batch.num_tokens, rel=1e-4)
    for name, param in student.named_parameters():
        torch.testing.assert_close(param.grad, expected[name], rtol=1e-3, atol=1e-6)


def test_a_fixed_teacher_runs_once_per_trajectory_and_gives_the_same_kl(tokenizer):
    teacher, student = tiny_llama(tokenizer, seed=0), tiny_llama(tokenizer, seed=1)
    trajectories = sample_trajectories(teacher, tokenizer, PROMPT, INPUTS[:4], CONFIG, torch.Generator().manual_seed(0))
    whole = collate(trajectories, tokenizer.eos_token_id, torch.device("cpu"))
    halves = [collate(trajectories[i::2], tokenizer.eos_token_id, torch.device("cpu")) for i in (1, 0)]
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    view = fixed(plain(teacher))
    expected = batch_kl_sum(plain(teacher), plain(student), whole, chunk=7)
    calls.clear()
    for half in halves:  # other groupings of the same trajectories: each computed once, here
        batch_kl_sum(view, plain(student), half, chunk=7)
    assert len(calls) == 2 and len(view.states) == len(set(trajectories))
    assert batch_kl_sum(view, plain(student), whole, chunk=7) == pytest.approx(expected, rel=1e-5)
    student.zero_grad()
    kl_backward(view, student, whole, chunk=7)
    assert len(calls) == 2  # nothing ran the teacher again
    torch.testing.assert_close(teacher_states(view, whole), teacher_states(plain(teacher), whole),
                               rtol=1e-4, atol=1e-5)


def test_teacher_stays_frozen_and_kl_falls(tokenizer):
    model = tiny_llama(tokenizer)
    before_hash = state_dict_hash(model.state_dict())
    probe = torch.tensor([tokenizer(PROMPT + INPUTS[0])["input_ids"]])
    teacher_logits = logits_of(model, probe)

    result = bake_prompt(model, tokenizer, PROMPT, INPUTS, CONFIG)

    # The teacher is the same network with the adapter disabled: its weights and outputs are untouched.
    assert result.teacher_unchanged and result.base_hash == before_hash
    assert base_weights_hash(result.model) == before_hash
    with result.model.disable_adapter():
        torch.testing.assert_close(logits_of(result.model, probe), teacher_logits, rtol=0, atol=0)
    trained = [n for n, p in result.model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)
    assert any(float(p.abs().max()) > 0 for n, p in result.model.named_parameters() if "lora_B" in n)
    # The KL on held-out inputs falls, and the report says so per epoch.
    assert result.kl_before == pytest.approx(result.kl_reference)
    assert result.kl_after < 0.8 * result.kl_before
    assert [row.epoch for row in result.history] == [1.0, 2.0, 3.0]
    assert 0.2 < result.strength < 1.0
    assert result.history[-1].strength == pytest.approx(result.strength)


def test_half_bake_lands_between_none_and_full(tokenizer):
    full = bake_prompt(tiny_gpt2(tokenizer), tokenizer, PROMPT, INPUTS, CONFIG)
    half = bake_prompt(tiny_gpt2(tokenizer), tokenizer, PROMPT, INPUTS, CONFIG.at_strength("half"))
    assert half.config.num_epochs == 1.5 and [row.epoch for row in half.history] == [1.0, 1.5]
    # A half-bake is the first half of the full schedule, step for step.
    assert half.history[0].heldout_kl == pytest.approx(full.history[0].heldout_kl, rel=1e-5)
    assert 0.0 < half.strength < full.strength
    assert full.kl_after < half.kl_after < half.kl_before


def test_adapter_and_merged_model_save_and_load(tokenizer, tmp_path):
    base_copy = tiny_llama(tokenizer)
    result = bake_prompt(tiny_llama(tokenizer), tokenizer, PROMPT, INPUTS, CONFIG.at_strength(0.34))
    probe = torch.tensor([tokenizer(INPUTS[0])["input_ids"]])
    baked_logits = logits_of(result.model, probe)

    adapter_dir = save_adapter(result, tmp_path / "adapter", tokenizer)
    manifest = read_manifest(adapter_dir)
    assert verify_model_dir(adapter_dir)
    assert manifest["prompt"] == PROMPT and manifest["strength"] == pytest.approx(result.strength)
    assert manifest["base_model_sha256"] == state_dict_hash(base_copy.state_dict())
    assert manifest["config"]["lora_r"] == CONFIG.lora_r
    with pytest.raises(ArtifactError, match="baked on base weights"):
        load_adapter(tiny_llama(tokenizer, seed=5), adapter_dir)
    reloaded = load_adapter(copy.deepcopy(base_copy), adapter_dir)
    torch.testing.assert_close(logits_of(reloaded, probe), baked_logits)

    merged_dir = export_merged(result, tokenizer, tmp_path / "merged")
    assert verify_model_dir(merged_dir)
    assert read_manifest(merged_dir)["baking"]["strength"] == pytest.approx(result.strength)
    model, _ = load_model_dir(merged_dir)
    assert not any("lora" in name for name in model.state_dict())
    torch.testing.assert_close(logits_of(model, probe), baked_logits, rtol=1e-4, atol=1e-4)


def test_cognate_model_bakes(tokenizer):
    model = tiny_cognate(tokenizer)
    before_hash = state_dict_hash(model.state_dict())
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= set(
        find_lora_targets(model))
    result = bake_prompt(model, tokenizer, PROMPT, INPUTS, CONFIG)
    assert base_weights_hash(result.model) == before_hash
    assert result.history[-1].train_kl < 0.8 * result.history[0].train_kl
    assert result.kl_after < 0.9 * result.kl_before


def test_stacking_sequence_and_pursuit(tokenizer):
    config = dataclasses.replace(CONFIG, max_new_tokens=6).at_strength("half")
    _, rows = stack_bakes(tiny_gpt2(tokenizer), tokenizer, PROMPT, INPUTS, config, rounds=2)
    assert [row["spec_prediction"] for row in rows] == [0.5, 0.75]
    assert 0.0 < rows[0]["measured_strength"] < rows[1]["measured_strength"] < 1.0
    assert rows[0]["kl_reference"] == pytest.approx(rows[1]["kl_reference"])  # one fixed target

    persona = "you are a calm sailor who speaks slowly. "
    _, steps = bake_sequence(tiny_gpt2(tokenizer), tokenizer, [PROMPT, persona], INPUTS[:6], config)
    assert [s["prompt"] for s in steps] == [PROMPT, persona]
    assert steps[0]["strength_vs_original"][PROMPT] > 0.0
    assert steps[1]["strength_vs_original"][persona] > 0.0

    _, pursuit = pursue_prompt(tiny_gpt2(tokenizer), tokenizer, PROMPT, INPUTS[:6], config, rounds=2)
    assert len(pursuit) == 2 and all(row["bake_strength"] > 0.0 for row in pursuit)


def retained_kl(original, model, tokenizer, retain) -> float:
    """Mean token KL(original || model) on the retained sequences' continuations."""
    batch = collate(retain, tokenizer.pad_token_id or 0, torch.device("cpu"))
    return batch_kl_sum(plain(original), plain(model), batch, chunk=64) / batch.num_tokens


def test_retention_holds_the_retained_sequences_to_the_unbaked_model(tokenizer):
    def ids(text):
        return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])

    # Other texts than the bake's inputs, each with a continuation the model is to keep predicting as before.
    retain = [Trajectory(ids(f"fact {i}:"), ids(f"fact {i}:"), ids(f" the number {i} is small")) for i in range(8)]
    measured = {}
    for weight in (0.0, 5.0):
        model = tiny_gpt2(tokenizer)
        original = copy.deepcopy(model).eval()
        config = dataclasses.replace(CONFIG, retention_weight=weight)
        result = bake_prompt(model, tokenizer, PROMPT, INPUTS, config, retain=retain)
        assert result.report()["retained_sequences"] == 8
        assert (result.history[-1].retain_loss is None) == (weight == 0.0)
        baked = result.merge()
        measured[weight] = (retained_kl(original, baked, tokenizer, retain), result.strength)
    drift_without, strength_without = measured[0.0]
    drift_with, strength_with = measured[5.0]
    assert drift_with < 0.5 * drift_without  # the retained continuations moved far less
    assert strength_with > 0.2  # and the prompt was still baked



def retained_ce(model, tokenizer, retain) -> float:
    """Mean token cross-entropy of ``model`` on the retained sequences' own continuations."""
    batch = collate(retain, tokenizer.pad_token_id or 0, torch.device("cpu"))
    with torch.no_grad():
        logits = model(input_ids=batch.student_ids).logits[batch.student_mask]
    targets = torch.tensor([token for t in retain for token in t.generated])
    return float(F.cross_entropy(logits.float(), targets))


def test_reference_retention_is_the_cross_entropy_of_the_retained_tokens_and_keeps_them(tokenizer):
    def ids(text):
        return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])

    retain = [Trajectory(ids(f"fact {i}:"), ids(f"fact {i}:"), ids(f" the number {i} is small")) for i in range(8)]
    # The chunked loss and its gradient are the whole batch's cross-entropy (chunks of 5 split rows apart).
    model = tiny_gpt2(tokenizer)
    batch = collate(retain, tokenizer.pad_token_id or 0, torch.device("cpu"))
    logits = model(input_ids=batch.student_ids).logits[batch.student_mask]
    targets = torch.tensor([token for t in retain for token in t.generated])
    (2.0 * F.cross_entropy(logits, targets)).backward()
    expected = {name: param.grad.clone() for name, param in model.named_parameters()}
    model.zero_grad()
    assert reference_ce_backward(model, batch, 5, weight=2.0) == pytest.approx(retained_ce(model, tokenizer, retain),
                                                                              rel=1e-5)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, expected[name], rtol=1e-4, atol=1e-6)
    # In a bake, held to their own tokens, the retained continuations become far more likely than before, held to the
    # unbaked model's distributions they stay near it, and the prompt is baked either way. (Cross-entropy pulls
    # harder than a KL that starts at 0: at this random model's weight 1 it undid the bake, so 0.25, as Phase 5.)
    before = retained_ce(tiny_gpt2(tokenizer), tokenizer, retain)
    after = {}
    for target, weight in (("unbaked", 5.0), ("reference", 0.25)):
        config = dataclasses.replace(CONFIG, retention_weight=weight, retention_target=target)
        result = bake_prompt(tiny_gpt2(tokenizer), tokenizer, PROMPT, INPUTS, config, retain=retain)
        after[target] = retained_ce(result.merge(), tokenizer, retain)
        assert result.strength > 0.15, target
    assert after["reference"] < before - 1.0 and abs(after["unbaked"] - before) < 0.5
    with pytest.raises(ValueError, match="retention_target"):
        BakingConfig(retention_target="teacher")


def test_retained_rows_in_two_padded_parts_give_the_whole_batchs_kl_and_gradient(tokenizer):
    from forge.baking.bake import _retain_backward
    from forge.data.batching import length_groups
    from forge.modelinfo import pad_token_id

    def ids(text):
        return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])

    long_context = "the tool protocol, written out at length so that this row is long: " * 3
    kept = [Trajectory(ids(f"{long_context}fact {i}:"), ids(f"{long_context}fact {i}:"), ids(f" number {i}"))
            for i in range(3)]
    kept += [Trajectory(ids(f"fact {i}:"), ids(f"fact {i}:"), ids(f" the number {i} is small")) for i in range(5)]
    kept = [kept[i] for i in (3, 0, 4, 5, 1, 6, 7, 2)]
    lengths = [len(t.student_context) + len(t.generated) for t in kept]
    assert len(length_groups(lengths, [1] * len(lengths))) == 2  # this batch does run in two parts
    unbaked, student = tiny_cognate(tokenizer, seed=0), tiny_cognate(tokenizer, seed=1)  # padding-sensitive model
    config = dataclasses.replace(CONFIG, retention_weight=3.0)
    student.zero_grad()
    whole = kl_backward(plain(unbaked), student, collate(kept, pad_token_id(tokenizer), torch.device("cpu")),
                        config.kl_chunk_tokens, config.retention_weight)
    expected = {name: param.grad.clone() for name, param in student.named_parameters() if param.grad is not None}
    student.zero_grad()
    assert _retain_backward(plain(unbaked), student, kept, tokenizer, config) == pytest.approx(whole, rel=1e-4)
    for name, param in student.named_parameters():
        if name in expected:
            torch.testing.assert_close(param.grad, expected[name], rtol=1e-3, atol=1e-6)


def test_joint_bake_pools_the_prompts_and_measures_each(tokenizer):
    persona = "you are a calm sailor who speaks slowly. "
    model, record = bake_together(tiny_gpt2(tokenizer), tokenizer, [PROMPT, persona], INPUTS, CONFIG)
    joint = record["joint"]
    # Both prompts' held-out trajectories are measured together (2 held-out inputs x 2 samples each).
    assert joint["heldout_trajectories"] == 2 * 2 * 2
    assert joint["kl_after"] < 0.8 * joint["kl_reference"]
    assert set(record["strengths"]) == {PROMPT, persona}
    assert all(strength > 0.2 for strength in record["strengths"].values())
    assert not any("lora_" in name for name, _ in model.named_parameters())  # merged


def test_cli_writes_model_and_report(tokenizer, tmp_path):
    model_dir = save_model_dir(tiny_llama(tokenizer), tokenizer, tmp_path / "base", phase="test")
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(json.dumps({"question": q}) + "\n" for q in INPUTS))
    out = tmp_path / "baked"
    args = ["--model", str(model_dir), "--prompt", PROMPT, "--inputs", str(inputs), "--strength", "half",
            "--out", str(out), "--set", "max_new_tokens=6", "--set", "lora_r=4", "--set", "learning_rate=1e-2"]
    assert bake_main(args) == 0
    report = json.loads((tmp_path / "baked.bake_report.json").read_text())
    assert report["kl_after"] < report["kl_before"]
    # The CLI bakes in target mode by default: "half" is a target strength of 0.5, reported as reached or not.
    assert report["config"]["mode"] == "target_strength" and report["config"]["target_strength"] == 0.5
    assert 0.0 < report["lora_scale"] <= 1.0
    assert report["target_reached"] == (abs(report["gap_closed"] - 0.5) <= 0.1)
    assert verify_model_dir(out)
    assert isinstance(AutoModelForCausalLM.from_pretrained(out), LlamaForCausalLM)

    assert bake_main(args[:-6] + ["--strength", "2"]) == 2
    assert bake_main(["--model", str(model_dir), "--prompt", PROMPT, "--inputs", str(tmp_path / "nope.txt"),
                      "--out", str(out)]) == 2
    assert bake_main(["--model", str(tmp_path), "--prompt", PROMPT, "--out", str(out)]) == 2


def test_bad_input_is_refused_clearly(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="fraction of the full schedule"):
        strength_fraction("strong")
    with pytest.raises(ValueError, match="past the end of the schedule"):
        BakingConfig(num_epochs=4.0)
    records = tmp_path / "gsm.jsonl"
    records.write_text(json.dumps({"question": "2+2?", "answer": "4"}) + "\n")
    assert load_inputs(records) == ["2+2?"]
    with pytest.raises(ValueError, match="no field 'body'"):
        load_inputs(records, field="body")
    blind = tiny_llama(tokenizer)  # with attention zeroed a token never sees its context, nor the prompt
    for layer in blind.model.layers:
        torch.nn.init.zeros_(layer.self_attn.o_proj.weight)
    keys = set(blind.state_dict())
    with pytest.raises(NothingToBake, match="nothing to bake"):
        bake_prompt(blind, tokenizer, PROMPT, INPUTS, CONFIG)
    assert set(blind.state_dict()) == keys  # no adapter layers left behind: the caller can go on with the model
