"""Phase 6's bakes keep the direct answers (issue 19): the problems they retain, their separation from the
scoreboard's held-out items, and a bake through the phase's own hook that holds the retained continuations."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from benchmarks.tasks import read_taskworld
from benchmarks.tooluse import INITIAL_TOOL_PROMPT, calculate
from benchmarks.tooluse_problems import load_problems
from forge.baking import BakingConfig
from forge.baking.kl import batch_kl_sum, plain
from forge.baking.trajectories import collate
from forge.config import PipelineConfig, load_pipeline_config
from forge.data import taskworld
from forge.data.tokenizer import train_bpe_tokenizer
from forge.phases.base import PhaseContext
from forge.phases.tool_persona import (ToolPersonaWork, bake_questions, item_tool_fitness, retained_direct_answers,
                                      retained_tool_transcripts, tool_fitness, tool_persona_criteria,
                                      validation_change_interval, validation_gain_intervals, validation_gains)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BAKE_INPUTS = bake_questions(["hard"], 10, None)
# Epochs mode: with ten inputs target mode would choose its LoRA scale on two calibration inputs (tests/test_halfbake.py
# covers it); what is checked here is that the phase's bakes hold the retained continuations.
BAKING = BakingConfig(lora_r=4, lora_alpha=8, learning_rate=1e-2, batch_size=4, samples_per_input=2, max_new_tokens=8,
                      mode="epochs")


@pytest.fixture(scope="module")
def tokenizer():
    texts = [taskworld.text(item) for item in taskworld.generate_items(300, seed=3)] + BAKE_INPUTS
    return train_bpe_tokenizer(texts + [INITIAL_TOOL_PROMPT], vocab_size=300)


def tiny_gpt2(tokenizer):
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(
        n_embd=32, n_layer=2, n_head=2, vocab_size=len(tokenizer), n_positions=128, initializer_range=0.2,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)).eval()


@pytest.mark.parametrize("seed", [0, 7])
def test_retained_problems_are_train_side_and_none_is_the_scoreboards(seed):
    problems = taskworld.easy_train_items(64, seed=seed)
    assert len({problem.canonical for problem in problems}) == len(problems) == 64
    assert {(p.family, p.level) for p in problems} <= {(family, level) for family in taskworld.EASY_FAMILIES
                                                      for level in taskworld.EASY_LEVELS}
    assert not any(taskworld.is_heldout(problem.canonical) for problem in problems)
    scoreboard = read_taskworld(easy=True)  # the scoreboard's taskworld_easy items, all of them
    assert len(scoreboard) == 90
    measured = {doc["id"].split("/", 2)[2] for doc in scoreboard}  # canonical forms: "3+4" and "4+3" are one
    assert not measured & {problem.canonical for problem in problems}
    # Asked the way the scoreboard asks: no instruction line, the question, then the answer line.
    assert all(doc["prompt"].startswith("Question: ") and doc["target"].startswith("Answer: ") for doc in scoreboard)
    assert all(taskworld.prompt(problem, "direct") == f"Question: {problem.question}\n" for problem in problems)


def test_retained_sequences_are_the_questions_with_their_gold_answer_lines(tokenizer):
    problems = taskworld.easy_train_items(16, seed=0)
    retained = retained_direct_answers(tokenizer, problems, None)
    assert len(retained) == 16
    for problem, sequence in zip(problems, retained):
        assert sequence.teacher_context == sequence.student_context  # the unbaked model reads what the student reads
        assert tokenizer.decode(list(sequence.student_context)) == f"Question: {problem.question}\n"
        assert list(sequence.generated) == tokenizer(f"Answer: {problem.answer}\n", add_special_tokens=False)[
            "input_ids"] + [tokenizer.eos_token_id]
    longest = max(len(s.student_context) + len(s.generated) for s in retained)
    assert len(retained_direct_answers(tokenizer, problems, longest - 1)) < 16  # longer than the model: dropped
    with pytest.raises(ValueError, match="bake_retain_items must be >= 0"):  # refused when the config loads
        load_pipeline_config("tiny", overrides=["tool_persona.bake_retain_items=-1"])
    assert load_pipeline_config("tiny", overrides=["tool_persona.bake_retain_items=0"]).tool_persona \
        .bake_retain_items == 0


def test_retained_tool_transcripts_copy_the_question_into_the_call_and_the_result_into_the_answer(tokenizer):
    config = load_pipeline_config("tiny", overrides=["tool_persona.bake_retain_tool_items=6"]).tool_persona
    retained = retained_tool_transcripts(tokenizer, ["hard"], config, None, None, seed=0)
    assert len(retained) == 6
    heldout = {problem.question for problem in load_problems(["hard"], heldout=True)}
    for sequence in retained:
        assert sequence.teacher_context == sequence.student_context
        context = tokenizer.decode(list(sequence.student_context))
        transcript = tokenizer.decode(list(sequence.generated))
        assert context.startswith(INITIAL_TOOL_PROMPT)  # the A-cycle's context, with the initial tool prompt
        question = context.rsplit("Question: What is ", 1)[1]
        expression = question.split("?", 1)[0]
        assert f"What is {expression}?" not in heldout  # train side
        result = str(calculate(expression))
        assert transcript.startswith(f"<calc>{expression}</calc>")
        assert f"<result>{result}</result>" in transcript and f"<answer>{result}</answer>" in transcript
    config.bake_retain_tool_items = 0
    assert retained_tool_transcripts(tokenizer, ["hard"], config, None, None, seed=0) == []
    with pytest.raises(ValueError, match="bake_retain_tool_items must be >= 0"):
        load_pipeline_config("tiny", overrides=["tool_persona.bake_retain_tool_items=-1"])


def retained_kl(original, model, tokenizer, retain) -> float:
    """Mean token KL(original || model) on the retained continuations."""
    batch = collate(retain, tokenizer.eos_token_id, torch.device("cpu"))
    return batch_kl_sum(plain(original), plain(model), batch, chunk=64) / batch.num_tokens


def test_the_phase_bake_holds_the_retained_direct_answers(tmp_path, tokenizer):
    retain = retained_direct_answers(tokenizer, taskworld.easy_train_items(16, seed=0), None)
    drift, records = {}, {}
    for weight in (0.0, 5.0):
        config = PipelineConfig()
        config.tool_persona.baking = dataclasses.replace(BAKING, retention_weight=weight)
        run_dir = tmp_path / f"weight{weight}"
        ctx = PhaseContext(config=config, run_dir=run_dir, phase_dir=run_dir / "tool_persona", inputs={})
        model = tiny_gpt2(tokenizer)
        original = copy.deepcopy(model)
        work = ToolPersonaWork(ctx, model, tokenizer, [], tool_pool=[], tool_validation=[], persona_tasks={},
                               bake_inputs=BAKE_INPUTS, retain=retain, tracker=None)
        strength = work.half_bake("A", INITIAL_TOOL_PROMPT, 0)
        assert strength > 0.0  # the prompt was baked
        drift[weight] = retained_kl(original, work.model, tokenizer, retain)
        records[weight] = work.prompts["bakes"][0]
    assert records[5.0]["retained_sequences"] == records[0.0]["retained_sequences"] == 16
    assert records[5.0]["retain_loss_last_epoch"] >= 0.0 and records[0.0]["retain_loss_last_epoch"] is None
    assert drift[5.0] < 0.5 * drift[0.0]  # the retained answers moved far less


def _tool_record(correct: bool, called: bool) -> dict:
    return {"correct": correct, "turns": 2 if called else 1, "answer": "1",
            "calls": [{"tool": "calc", "well_formed": True, "error": None}] if called else []}


def test_the_held_out_change_has_a_paired_interval_over_the_same_items():
    weights = {"accuracy": 1.0, "tool_usage_rate": 0.1}
    records = [_tool_record(True, True), _tool_record(False, True), _tool_record(False, False)]
    per_item = item_tool_fitness(records, weights)
    assert per_item == pytest.approx([1.1, 0.1, 0.0])
    assert sum(per_item) / 3 == pytest.approx(tool_fitness({"accuracy": 1 / 3, "tool_usage_rate": 2 / 3}, weights))
    assert item_tool_fitness(records, {"calls/calc": 1.0}) is None  # a count is not a mean over items
    # 48 tool items of which the model handed on loses 2 and 48 persona items unchanged: the total falls by 2/48,
    # and the interval of the paired change (resampling the same items) reaches from below it up to 0.
    before = {"tool_fitness": [1.0] * 30 + [0.0] * 18, "synthetic_reasoning": [1.0] * 14 + [0.0] * 34}
    after = {"tool_fitness": [1.0] * 28 + [0.0] * 20, "synthetic_reasoning": before["synthetic_reasoning"]}
    low, high = validation_change_interval(before, after, {"synthetic_reasoning": 1.0}, seed=0)
    assert low < -2 / 48 < high and high == 0.0 and low >= -5 / 48
    # Two persona tasks weighted 3:1 and no tool change: the total moves by the weighted persona change.
    two = {"a": 3.0, "b": 1.0}
    base = {"tool_fitness": [0.0] * 8, "a": [0.0] * 8, "b": [0.0] * 8}
    better = {**base, "a": [1.0] * 8}
    assert validation_change_interval(base, better, two, seed=0) == pytest.approx([0.75, 0.75])
    assert validation_change_interval({**base, "tool_fitness": None}, better, two, seed=0) is None


def test_each_cycles_validation_gain_has_a_paired_interval_over_the_same_items():
    # A: 48 tool items, two gained and none lost (30 -> 32 right): +6.7%, and no resample shows a loss.
    before = {"tool_fitness": [1.0] * 30 + [0.0] * 18, "a": [1.0] * 4 + [0.0] * 4, "b": [1.0] * 4 + [0.0] * 4}
    after = {**before, "tool_fitness": [1.0] * 32 + [0.0] * 16, "a": [1.0] * 8}
    two = {"a": 3.0, "b": 1.0}
    intervals = validation_gain_intervals(before, after, two, seed=0)
    gains = validation_gains({"tool_fitness": 30 / 48, "persona_aggregate": 0.5},
                             {"tool_fitness": 32 / 48, "persona_aggregate": 0.75 * 1.0 + 0.25 * 0.5})
    assert gains["A"] == pytest.approx(2 / 30) and gains["B"] == pytest.approx(0.75)
    low, high = intervals["A"]
    assert low == 0.0 and 2 / 30 < high < 0.25
    # B: task a (weight 3) goes from 4 of 8 to 8 of 8, b stays: the aggregate's gain, resampled within each task.
    low, high = intervals["B"]
    assert 0.0 < low < 0.75 < high
    assert validation_gain_intervals({**before, "tool_fitness": None}, after, two, seed=0)["A"] is None
    # The criteria show them; a cycle that never ran has no gain and no interval.
    criteria = tool_persona_criteria(True, gains["A"], None, 0.5, 0.0, None, intervals)
    assert criteria["a_cycle_improvement"]["interval"] == intervals["A"] and not criteria["a_cycle_improvement"]["met"]
    assert "interval" not in criteria["b_cycle_improvement"]

