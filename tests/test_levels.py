"""Phase 5's technique: curriculum levels, the training stage, level accuracy, value prompts, dequantization."""
from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from forge.artifacts import load_model_dir, save_model_dir
from forge.baking import BakingConfig
from forge.data import splits
from forge.data.arithmetic import calculate
from forge.data.replay import Replay
from forge.data.tokenizer import load_gpt2_tokenizer, train_bpe_tokenizer
from forge.configtools import ConfigError
from forge.config import load_pipeline_config
from forge.curriculum.levels import (DEFAULT_VALUES_FILE, CurriculumPhaseConfig, LevelItem, TaskWorldLevel, answer_loss,
                          build_levels, completion_text, level_accuracy, level_passed, level_specs,
                          load_value_prompts, prompt_text, right_by_family, stage_lr_factor, train_stage)
from forge.data import taskworld
from forge.quant.bitlinear import TernaryLinear
from forge.quant.convert import dequantize_model, pack_model, quantizable_linears, to_bitlinear
from forge.quant.kernels import fake_quantize_activations

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEP = re.compile(r"(\d+) ([-+*]) (\d+) = (\d+)\.")
SYNTHETIC = CurriculumPhaseConfig(level_source="synthetic")


def operations_and_operands(item: LevelItem) -> tuple[int, int]:
    steps = STEP.findall(item.solution)
    return len(steps), max(int(n) for n in re.findall(r"\d+", item.question))


@pytest.fixture(scope="module")
def tokenizer():
    levels = build_levels(CurriculumPhaseConfig(), None) + build_levels(SYNTHETIC, None)
    texts = [prompt_text(item) + completion_text(item) for level in levels for item in level.train]
    return train_bpe_tokenizer(texts, vocab_size=400)


def tiny_llama(tokenizer, seed: int = 0, hidden: int = 64) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=256, bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)).eval()


# ------------------------------------------------------------------------------------ levels

def test_difficulty_rises_level_by_level():
    for num_levels in (2, 5, 10):
        specs = level_specs(dataclasses.replace(SYNTHETIC, num_levels=num_levels), with_data=False)
        assert [spec.level for spec in specs] == list(range(1, num_levels + 1))
        assert all(spec.source == "synthetic" for spec in specs)
        assert specs[0].operations == 1 and specs[0].max_operand == 20
        assert specs[-1].operations == 3 and specs[-1].max_operand == 999
        for lower, higher in zip(specs, specs[1:]):
            assert higher.operations >= lower.operations and higher.max_operand > lower.max_operand

    level_1, level_2 = build_levels(dataclasses.replace(SYNTHETIC, train_items=64, heldout_items=8), None)
    ops_1, operands_1 = zip(*map(operations_and_operands, level_1.train + level_1.heldout))
    ops_2, operands_2 = zip(*map(operations_and_operands, level_2.train + level_2.heldout))
    assert set(ops_1) == {1} and set(ops_2) == {3}
    assert max(operands_1) <= 20 < max(operands_2) <= 999
    assert sum(operands_2) / len(operands_2) > 5 * sum(operands_1) / len(operands_1)


def test_word_problem_levels_sit_on_top_only_with_data_and_room():
    ten = level_specs(dataclasses.replace(SYNTHETIC, num_levels=10), with_data=True)
    assert [spec.source for spec in ten] == ["synthetic"] * 8 + ["svamp", "gsm8k"]
    assert [spec.operations for spec in ten[:8]] == sorted(spec.operations for spec in ten[:8])
    # Two levels with data: no room for two levels below the word problems, so none are added.
    assert [spec.source for spec in level_specs(CurriculumPhaseConfig(), with_data=True)] == ["taskworld"] * 2
    assert [spec.source for spec in level_specs(SYNTHETIC, with_data=True)] == ["synthetic"] * 2


def test_items_are_correct_deterministic_and_heldout_is_disjoint():
    config = dataclasses.replace(SYNTHETIC, num_levels=3, train_items=100, heldout_items=20)
    levels = build_levels(config, None)
    assert levels == build_levels(config, None)
    other_seed = build_levels(dataclasses.replace(config, seed=1), None)
    assert levels[0].train != other_seed[0].train
    for level in levels:
        assert len(level.train) == 100 and len(level.heldout) == 20
        train_questions = {item.question for item in level.train}
        assert len(train_questions) == 100
        assert not train_questions & {item.question for item in level.heldout}
        for item in level.train + level.heldout:
            steps = STEP.findall(item.solution)
            for left, op, right, result in steps:
                assert calculate(f"{left}{op}{right}") == result
            assert steps[-1][3] == item.answer and int(item.answer) >= 0


def test_data_levels_draw_train_and_heldout_sides(shared_data):
    ladder = [TaskWorldLevel(["add"], 2), TaskWorldLevel(["cmp"], 2), TaskWorldLevel(["mul"], 4),
              TaskWorldLevel(["word"], 5)]
    config = CurriculumPhaseConfig(num_levels=4, train_items=40, heldout_items=10, taskworld_ladder=ladder)
    levels = build_levels(config, shared_data)
    # The word problems replace the ladder's top entries.
    assert [level.spec.source for level in levels] == ["taskworld", "taskworld", "svamp", "gsm8k"]
    assert [level.spec.families for level in levels[:2]] == [("add",), ("cmp",)]
    for level in levels[2:]:
        source = level.spec.source
        train_side = {record["question"] for record in splits.train_items(source, shared_data)}
        heldout_side = {record["question"] for record in splits.heldout_items(source, shared_data)}
        assert len(level.train) == 40 and len(level.heldout) == 10
        assert {item.question for item in level.train} <= train_side - heldout_side
        assert {item.question for item in level.heldout} <= heldout_side
        for item in level.train + level.heldout:
            assert "<<" not in item.solution and item.answer
            assert len(item.question) + len(item.solution) <= config.max_item_chars


def test_taskworld_levels_are_disjoint_deterministic_and_at_their_cells():
    ladder = [TaskWorldLevel(["add", "cmp"], 2), TaskWorldLevel(["sub"], 3)]
    config = CurriculumPhaseConfig(num_levels=2, taskworld_ladder=ladder, train_items=120, heldout_items=40)
    levels = build_levels(config, None)
    assert levels == build_levels(config, None)
    assert build_levels(dataclasses.replace(config, seed=1), None)[0].train != levels[0].train
    assert [(level.spec.source, level.spec.families, level.spec.taskworld_level) for level in levels] == \
        [("taskworld", ("add", "cmp"), 2), ("taskworld", ("sub",), 3)]
    every_train, every_heldout = [], []
    for level, entry in zip(levels, ladder):
        train = [item.task for item in level.train]
        heldout = [item.task for item in level.heldout]
        assert len(train) == 120 and len(heldout) == 40
        assert {task.family for task in train + heldout} == set(entry.families)
        assert {task.level for task in train + heldout} == {entry.level}
        assert len({task.canonical for task in train}) == 120  # distinct problems
        taskworld.check_disjoint(train, heldout)
        assert not any(taskworld.is_heldout(task.canonical) for task in train)
        assert all(taskworld.is_heldout(task.canonical) for task in heldout)
        every_train += train
        every_heldout += heldout
        for item in level.train + level.heldout:
            taskworld.check_item(item.task)
            assert (item.question, item.answer) == (item.task.question, item.task.answer)
            # The world's own direct-mode texts: no solution line before the answer.
            assert prompt_text(item) == taskworld.prompt(item.task, "direct") == f"Question: {item.question}\n"
            assert completion_text(item) == taskworld.target(item.task, "direct") == f"Answer: {item.answer}\n"
    taskworld.check_disjoint(every_train, every_heldout)  # no level trains on another level's held-out problem


def test_taskworld_level_too_small_for_its_items_says_so():
    config = CurriculumPhaseConfig(num_levels=1, taskworld_ladder=[TaskWorldLevel(["add"], 1)], train_items=40,
                                   heldout_items=30)
    with pytest.raises(ValueError, match=r"add at level 1\) has only \d+ distinct heldout problems, 30 wanted"):
        build_levels(config, None)


def test_right_answers_are_tallied_per_family_in_order_of_first_appearance():
    ladder = [TaskWorldLevel(["cmp", "add"], 2)]
    level = build_levels(CurriculumPhaseConfig(num_levels=1, taskworld_ladder=ladder, train_items=8,
                                               heldout_items=12), None)[0]
    families = [item.task.family for item in level.heldout]
    correct = [1 if family == "cmp" else 0 for family in families]
    correct[families.index("add")] = 1  # one right add problem
    tally = right_by_family(level.heldout, correct)
    assert list(tally) == list(dict.fromkeys(families))
    assert tally["cmp"] == [families.count("cmp"), families.count("cmp")]
    assert tally["add"] == [1, families.count("add")]
    synthetic = build_levels(CurriculumPhaseConfig(num_levels=1, level_source="synthetic", train_items=4,
                                                   heldout_items=4), None)[0]
    assert right_by_family(synthetic.heldout, [1, 0, 1, 0]) == {}  # no families: nothing to split
    with pytest.raises(ValueError, match="12 items but 11 answers"):
        right_by_family(level.heldout, correct[:-1])


def test_pass_rule_at_its_boundary():
    config = CurriculumPhaseConfig(pass_accuracy=0.75)
    assert level_passed(0.75, config) and level_passed(1.0, config)
    assert not level_passed(0.75 - 1e-9, config) and not level_passed(23 / 32, config)
    assert level_passed(24 / 32, config)


def test_bad_ladder_config_names_the_problem():
    with pytest.raises(ValueError, match="taskworld_ladder has 2 entries but num_levels is 3"):
        CurriculumPhaseConfig(num_levels=3)
    with pytest.raises(ValueError, match=r"levels \[3, 2\] fall"):
        CurriculumPhaseConfig(taskworld_ladder=[TaskWorldLevel(["add"], 3), TaskWorldLevel(["add"], 2)])
    with pytest.raises(ValueError, match=r"families \['add', 'div'\]: give distinct names from add, sub"):
        TaskWorldLevel(["add", "div"], 2)
    with pytest.raises(ValueError, match="distinct names"):
        TaskWorldLevel(["add", "add"], 2)
    with pytest.raises(ValueError, match="level 6"):
        TaskWorldLevel(["add"], 6)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="pass_accuracy"):
            CurriculumPhaseConfig(pass_accuracy=bad)
    # The synthetic source ignores the ladder, so the full-size presets' 10 levels need none.
    assert CurriculumPhaseConfig(num_levels=10, level_source="synthetic").num_levels == 10
    # From YAML / --set: a ConfigError naming the key.
    with pytest.raises(ConfigError, match="curriculum.*taskworld_ladder has 1 entries but num_levels is 2"):
        load_pipeline_config("tiny", overrides=["curriculum.taskworld_ladder=[{families: [add], level: 2}]"])
    with pytest.raises(ConfigError, match=r"curriculum.taskworld_ladder\[0\]: .*level 9"):
        load_pipeline_config("tiny", overrides=["curriculum.num_levels=1",
                                                "curriculum.taskworld_ladder=[{families: [add], level: 9}]"])
    with pytest.raises(ConfigError, match="level_source.*'tasks'"):
        load_pipeline_config("tiny", overrides=["curriculum.level_source=tasks"])


# ------------------------------------------------------------------------------------ accuracy and training

@pytest.mark.parametrize("source", ["taskworld", "synthetic"])
def test_training_stage_lowers_loss_and_raises_accuracy(tokenizer, source):
    level = build_levels(CurriculumPhaseConfig(level_source=source, train_items=4, heldout_items=4), None)[0]
    model = tiny_llama(tokenizer)
    items = level.train
    loss_before = answer_loss(model, tokenizer, items)
    accuracy_before = level_accuracy(model, tokenizer, items, max_new_tokens=24)
    config = CurriculumPhaseConfig(steps_per_level=120, batch_size=4, learning_rate=3e-3)
    report = train_stage(model, tokenizer, items, config)
    assert report.steps == 120 and report.sequences == 4
    assert report.loss_last < report.loss_first / 4
    assert answer_loss(model, tokenizer, items) < loss_before / 4
    # Four memorised items: the whole path (generation, stopping, parsing, matching) must find them right.
    accuracy_after = level_accuracy(model, tokenizer, items, max_new_tokens=24)
    assert accuracy_before == 0.0 and accuracy_after == 1.0
    # Hand-made answers: the same memorised outputs are wrong for two items whose answers are changed.
    altered = [dataclasses.replace(item, answer=str(int(item.answer) + 1)) if index % 2 else item
               for index, item in enumerate(items)]
    assert level_accuracy(model, tokenizer, altered, max_new_tokens=24) == 0.5
    if source == "taskworld":  # exact match: the same number written differently is wrong
        padded = [dataclasses.replace(item, answer="0" + item.answer) for item in items]
        assert level_accuracy(model, tokenizer, padded, max_new_tokens=24) == 0.0


def test_training_stage_replays_pretraining_text(tokenizer):
    level = build_levels(dataclasses.replace(SYNTHETIC, train_items=4, heldout_items=4), None)[0]
    text = ["Level one adds numbers and level two multiplies them, one step at a time. " * 6] * 4
    ids = torch.tensor([tokenizer(text[0], add_special_tokens=False)["input_ids"][:64]])
    config = CurriculumPhaseConfig(steps_per_level=40, batch_size=4, learning_rate=3e-3, replay_sequences=2,
                                   replay_seq_len=32)
    losses = {}
    for replayed in (False, True):
        model = tiny_llama(tokenizer)
        replay = Replay(tokenizer, text, config.replay_seq_len, config.replay_sequences, seed=0) if replayed else None
        report = train_stage(model, tokenizer, level.train, config, replay=replay)
        assert (report.replay_loss_mean is not None) == replayed
        with torch.no_grad():
            losses[replayed] = model(input_ids=ids, labels=ids).loss.item()
    assert losses[True] < losses[False] / 2, losses  # the replayed text is modelled; without replay it is not


def test_training_stage_learns_the_extra_pairs_too(tokenizer):
    level = build_levels(dataclasses.replace(SYNTHETIC, train_items=4, heldout_items=4), None)[0]
    model = tiny_llama(tokenizer)
    pairs = [(f"Call {n}:\n", f"<calc>{n}*2</calc>") for n in range(4)] + [("x" * 400, "too long")]
    config = CurriculumPhaseConfig(steps_per_level=80, batch_size=4, learning_rate=3e-3)
    report = train_stage(model, tokenizer, level.train, config, extra_pairs=pairs)
    assert report.sequences == 8 and report.extra_sequences == 4  # the pair over 256 positions is dropped
    prompt = tokenizer("Call 2:\n", add_special_tokens=False)["input_ids"]
    completion = model.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False)[0, len(prompt):]
    assert tokenizer.decode(completion).startswith("<calc>2*2</calc>")



def grads_after(model, step) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    step()
    return {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}


def test_a_mixed_batch_in_two_padded_parts_has_the_whole_batchs_loss_and_gradient(tokenizer):
    from forge.curriculum.levels import batch_loss_backward, collate, encode_pairs
    from forge.data.batching import length_groups

    long_prompt = "Tools: write <calc>expression</calc> to evaluate arithmetic. " * 4
    pairs = [(f"{long_prompt}Question: What is {n}*7?\n", f"<calc>{n}*7</calc>") for n in range(3)]
    pairs += [(f"Question: {n} + 1?\n", f"Answer: {n + 1}") for n in range(5)]
    rows = encode_pairs(tokenizer, pairs, None)
    rows = [rows[i] for i in (0, 3, 4, 1, 5, 6, 2, 7)]  # long and short rows interleaved, as a shuffle leaves them
    assert len(length_groups([len(ids) for ids, _ in rows], [1] * len(rows))) == 2  # this batch does run in two parts
    model = tiny_llama(tokenizer).train()

    def whole():
        input_ids, mask, labels = collate(rows, tokenizer.eos_token_id, torch.device("cpu"))
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        return loss.item()

    value = {}
    expected = grads_after(model, lambda: value.setdefault("whole", whole()))
    split = grads_after(model, lambda: value.setdefault("split", batch_loss_backward(model, rows,
                                                                                       tokenizer.eos_token_id)))
    assert value["split"] == pytest.approx(value["whole"], rel=1e-5)
    assert split.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(split[name], expected[name], rtol=1e-4, atol=1e-6)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="num_levels"):
        CurriculumPhaseConfig(num_levels=0)
    with pytest.raises(ValueError, match="operand_start"):
        CurriculumPhaseConfig(operand_start=50, operand_end=10)
    with pytest.raises(ValueError, match="data_levels"):
        CurriculumPhaseConfig(data_levels=["mmlu"])
    with pytest.raises(ValueError, match="bake_inputs"):
        CurriculumPhaseConfig(bake_inputs=1)
    # Target-strength bakes (the default) keep one input to calibrate on besides the held-out one.
    with pytest.raises(ValueError, match="bake_inputs must be >= 3"):
        CurriculumPhaseConfig(bake_inputs=2)
    assert CurriculumPhaseConfig(bake_inputs=3).bake_inputs == 3
    assert CurriculumPhaseConfig(bake_inputs=2, baking=BakingConfig(mode="epochs")).bake_inputs == 2
    with pytest.raises(ValueError, match="tool_use_items"):
        CurriculumPhaseConfig(tool_use_items=-1)
    with pytest.raises(ValueError, match="distinct items"):
        build_levels(CurriculumPhaseConfig(level_source="synthetic", operand_start=2, operand_end=2,
                                           max_operations=1), None)
    with pytest.raises(ValueError, match="lr_schedule must be 'constant' or 'cosine'"):
        CurriculumPhaseConfig(lr_schedule="linear")


def test_level_learning_rate_warms_up_then_stays_or_decays_to_a_tenth_at_the_last_step():
    constant = CurriculumPhaseConfig(steps_per_level=20, warmup_steps=4)
    cosine = dataclasses.replace(constant, lr_schedule="cosine")
    for config in (constant, cosine):  # the same warm-up: 1/5 .. 5/5 over the first five steps
        assert [stage_lr_factor(step, config) for step in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert {stage_lr_factor(step, constant) for step in range(5, 20)} == {1.0}
    decay = [stage_lr_factor(step, cosine) for step in range(5, 20)]
    assert decay[0] == 1.0 and all(a > b for a, b in zip(decay, decay[1:]))  # from the peak, falling every step
    assert stage_lr_factor(19, cosine) == pytest.approx(0.1, abs=0.02) and decay[-1] > 0.1


# ------------------------------------------------------------------------------------ value prompts

def test_shipped_values_file_has_the_spec_prompts_and_they_are_short():
    prompts = load_value_prompts(DEFAULT_VALUES_FILE)
    names = [prompt.name for prompt in prompts]
    assert sum(name.startswith("eudaimonia_") for name in names) == 4
    assert "ooda_loop" in names and "identity" in names and len(names) == 6
    gpt2 = load_gpt2_tokenizer()
    for prompt in prompts:
        assert prompt.text.endswith("\n") and "  " not in prompt.text
        assert len(gpt2(prompt.text)["input_ids"]) < 60, prompt.name


def test_values_file_errors_name_the_file_and_the_fix(tmp_path):
    missing = tmp_path / "missing.yaml"
    with pytest.raises(FileNotFoundError, match="missing.yaml.*values.yaml"):
        load_value_prompts(missing)
    cases = {
        "broken.yaml": ("prompts: [unclosed\n", "not valid YAML"),
        "empty.yaml": ("other: 1\n", "non-empty 'prompts:' list"),
        "no_text.yaml": ("prompts:\n  - name: a\n", "prompt 1 must have exactly"),
        "duplicate.yaml": ("prompts:\n  - {name: a, text: x}\n  - {name: a, text: y}\n", "more than once"),
    }
    for file_name, (content, message) in cases.items():
        path = tmp_path / file_name
        path.write_text(content)
        with pytest.raises(ValueError, match=message) as info:
            load_value_prompts(path)
        assert file_name in str(info.value) and "curriculum.values_file" in str(info.value)


# ------------------------------------------------------------------------------------ dequantization

def test_dequantize_model_matches_ternary_up_to_activation_rounding(tmp_path, tokenizer):
    model = tiny_llama(tokenizer, hidden=32)
    names = quantizable_linears(model)
    to_bitlinear(model, names)
    pack_model(model)
    save_model_dir(model, tokenizer, tmp_path / "ternary", phase="bitnet")
    ternary, _ = load_model_dir(tmp_path / "ternary")
    layer = ternary.get_submodule(names[0])
    assert isinstance(layer, TernaryLinear)
    ids = torch.randint(0, len(tokenizer), (2, 16), generator=torch.Generator().manual_seed(0))
    x = torch.randn(3, layer.in_features, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits_ternary = ternary(input_ids=ids).logits
        layer_ternary = layer(x)

    assert sorted(dequantize_model(ternary)) == sorted(names)
    linear = ternary.get_submodule(names[0])
    assert type(linear) is torch.nn.Linear and linear.weight.requires_grad
    assert not any(isinstance(m, TernaryLinear) for m in ternary.modules())
    assert not hasattr(ternary.config, "quantization_config")
    with torch.no_grad():
        # The only difference left is TernaryLinear's 8-bit activation rounding: applying it reproduces
        # the ternary layer, leaving it out moves the model's logits by little.
        assert torch.allclose(linear(fake_quantize_activations(x)), layer_ternary, atol=1e-5)
        assert not torch.allclose(linear(x), layer_ternary, atol=1e-5)
        logits_float = ternary(input_ids=ids).logits
    assert (logits_float - logits_ternary).abs().max() < 0.05 * logits_ternary.abs().max()

    save_model_dir(ternary, tokenizer, tmp_path / "float", phase="curriculum")
    reloaded, _ = load_model_dir(tmp_path / "float")
    assert not any(isinstance(m, TernaryLinear) for m in reloaded.modules())
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, logits_float)
    assert dequantize_model(reloaded) == []


def test_every_task_world_level_rehearses_easy_train_side_problems():
    """The rehearsed problems are the scoreboard's easy cells in its direct form, from the train side only (none
    of taskworld_easy's items), seeded; synthetic levels rehearse nothing and a negative count is refused."""
    from benchmarks.tasks import read_taskworld
    from forge.curriculum.levels import rehearsal_pairs

    config = CurriculumPhaseConfig(rehearsal_items=40)
    pairs = rehearsal_pairs(config)
    assert len(set(pairs)) == 40 and pairs == rehearsal_pairs(config)
    assert pairs != rehearsal_pairs(dataclasses.replace(config, seed=1))
    assert all(re.fullmatch(r"Question: (What is \d+\+\d+|Which is larger, \d+ or \d+)\?\n", prompt)
               and re.fullmatch(r"Answer: \d+\n", answer) for prompt, answer in pairs)
    assert not {prompt for prompt, _ in pairs} & {doc["prompt"] for doc in read_taskworld(mode="direct", easy=True)}
    assert rehearsal_pairs(dataclasses.replace(config, rehearsal_items=0)) == []
    assert rehearsal_pairs(dataclasses.replace(config, level_source="synthetic")) == []
    with pytest.raises(ValueError, match="rehearsal_items must be >= 0"):
        CurriculumPhaseConfig(rehearsal_items=-1)
    with pytest.raises(ValueError, match="bake_retain_rehearsal >= 0"):
        CurriculumPhaseConfig(bake_retain_rehearsal=-1)
