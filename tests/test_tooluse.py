"""Tool-use benchmark: calculator, call parsing and execution on fixed transcripts, metrics on
hand-computed cases, problems and their sides, and the whole loop driven by a tiny trained model."""
import pytest
import torch

from benchmarks.cache import ResultCache
from benchmarks.sandbox import SandboxLimits
from benchmarks.tooluse import (INITIAL_TOOL_PROMPT, Episode, ToolUseConfig, accuracy_intervals, advance,
                                build_context, evaluate_direct, evaluate_tool_use, item_metrics, load_problems, rotation_subset,
                                score_answers, tool_use_metrics, training_examples)
from benchmarks.scripts.tooluse_measure import train
from benchmarks.tooluse_problems import ToolProblem, demonstrations
from benchmarks.tooluse_tools import CalculatorError, NotArithmeticError, calculate, find_call

FAST = SandboxLimits(timeout_s=2.0)
ADD = ToolProblem(id="t/add", source="easy", kind="arithmetic", question="What is 3 plus 4?", answer="7",
                  reference="3+4")
SQUARE = ToolProblem(id="t/square", source="mbpp", kind="code", question="Write square(x).", answer="",
                     tests=("assert square(3) == 9", "assert square(-2) == 4"),
                     reference="def square(x):\n    return x * x")


# ---------------------------------------------------------------- calculator

@pytest.mark.parametrize("expression, value", [
    ("3+4", "7"), ("2 * (3 + 4)", "14"), ("7/2", "3.5"), ("1/3", "0.333333"), ("-5 + 2", "-3"),
    ("2**10", "1024"), ("17 // 5", "3"), ("17 % 5", "2"), ("1,250 * 2", "2500"), ("( 5.0 + 3.0 )", "8"),
])
def test_calculator_evaluates_arithmetic(expression, value):
    assert calculate(expression) == value


@pytest.mark.parametrize("expression", [
    "__import__('os').system('true')", "open('x')", "x + 1", "(1).real", "'a' * 3", "[1, 2]", "True + 1",
    "2 < 3", "lambda: 1", "1 if 2 else 3", "", "1 +", "2" * 300, "(1, 2)",
])
def test_calculator_refuses_non_arithmetic(expression):
    with pytest.raises(NotArithmeticError):
        calculate(expression)


@pytest.mark.parametrize("expression", ["1/0", "5 % 0", "2 ** 1000", "10 ** 10 * 10 ** 10", "9e307 * 10"])
def test_calculator_refuses_failed_or_huge_arithmetic(expression):
    with pytest.raises(CalculatorError) as info:
        calculate(expression)
    assert not isinstance(info.value, NotArithmeticError)


# ---------------------------------------------------------------- one turn at a time, fixed completions

def _episode(problem=ADD):
    return Episode(problem, build_context(INITIAL_TOOL_PROMPT, problem))


def test_find_call_splits_at_the_first_tag():
    assert find_call("I will add. <calc>3+4") == ("I will add. ", "calc", "3+4")
    assert find_call("<answer>7") == ("", "answer", "7")
    assert find_call("just text") == ("just text", None, "")


def test_calc_call_runs_and_its_result_is_appended_then_the_answer_ends_the_run():
    episode = _episode()
    context = episode.context
    advance([episode], ["Add them. <calc>3+4"], [False], max_turns=4, limits=FAST)
    call = episode.calls[0]
    assert (call.tool, call.argument, call.well_formed, call.error, call.result) == ("calc", "3+4", True, None, "7")
    assert episode.context == context + "Add them. <calc>3+4</calc>\n<result>7</result>\n"
    assert not episode.stopped and episode.turns == 1
    advance([episode], ["<answer>7"], [False], max_turns=4, limits=FAST)
    assert (episode.stopped, episode.answer, episode.turns) == ("answer", "7", 2)
    score_answers([episode], FAST)
    assert episode.correct
    assert episode.transcript.endswith("<result>7</result>\n<answer>7</answer>")


def test_refused_and_unclosed_calls_are_errors_and_not_well_formed():
    refused, unclosed, stray = _episode(), _episode(), _episode()
    advance([refused, unclosed, stray], ["<calc>import os", "<calc>3+4+4+4+4", "<calc>3+4 <result>7"],
            [False, True, False], max_turns=4, limits=FAST)
    assert not refused.calls[0].well_formed and "not an arithmetic" in refused.calls[0].error
    assert refused.context.endswith("<calc>import os</calc>\n<result>error: not an arithmetic expression: "
                                    "invalid syntax</result>\n") and not refused.stopped
    assert unclosed.stopped == "out_of_tokens" and unclosed.calls[0].error == "malformed: no </calc>"
    assert not stray.calls[0].well_formed and "<result>" in stray.calls[0].error


def test_turn_without_call_or_answer_ends_the_run_and_max_turns_stops_it():
    talker, caller = _episode(), _episode()
    advance([talker, caller], ["I think it is seven.", "<calc>1+1"], [False, False], max_turns=1, limits=FAST)
    assert (talker.stopped, talker.answer, caller.stopped) == ("no_call", None, "max_turns")
    score_answers([talker], FAST)
    assert not talker.correct


def test_python_call_runs_the_problems_tests_in_the_sandbox():
    good, bad, printer = _episode(SQUARE), _episode(SQUARE), _episode(ADD)
    advance([good, bad, printer],
            ["<python>\ndef square(x):\n    return x * x\n", "<python>\ndef square(x):\n    return 2 * x\n",
             "<python>print(3 + 4)"], [False, False, False], max_turns=4, limits=FAST)
    assert good.calls[0].result == "All tests passed." and good.calls[0].error is None
    assert bad.calls[0].well_formed and "AssertionError" in bad.calls[0].error
    assert printer.calls[0].result == "7"  # printed output comes back; an arithmetic item has no tests


def test_infinite_loop_in_a_python_call_times_out_and_the_run_continues():
    episode = _episode(SQUARE)
    advance([episode], ["<python>\nwhile True:\n    pass\n"], [False], max_turns=4,
            limits=SandboxLimits(timeout_s=1.0))
    call = episode.calls[0]
    assert call.well_formed and call.error == "timeout" and call.result.startswith("error: timed out")
    assert not episode.stopped
    advance([episode], ["<answer>\ndef square(x):\n    return x ** 2\n"], [False], max_turns=4, limits=FAST)
    score_answers([episode], FAST)
    assert episode.stopped == "answer" and episode.correct and episode.turns == 2


def test_wrong_code_answer_fails_its_tests():
    episode = _episode(SQUARE)
    advance([episode], ["<answer>def square(x):\n    return x + x"], [False], max_turns=4, limits=FAST)
    score_answers([episode], FAST)
    assert not episode.correct


# ---------------------------------------------------------------- metrics

def _record(source, correct, turns, calls, sample_correct, answer="1"):
    return {"id": source, "source": source, "correct": correct, "turns": turns, "answer": answer,
            "calls": [{"tool": tool, "well_formed": ok, "error": error} for tool, ok, error in calls],
            "sample_correct": sample_correct}


def test_metrics_on_a_hand_computed_case():
    records = [
        _record("easy", True, 2, [("calc", True, None)], [True] * 3 + [False] * 7),
        _record("easy", False, 1, [], [False] * 10, answer=None),
        _record("mbpp", True, 3, [("calc", False, "malformed"), ("python", True, "timeout")], [True] * 10),
    ]
    metrics = tool_use_metrics(records)
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["avg_turns"] == pytest.approx(2.0)
    assert metrics["tool_usage_rate"] == pytest.approx(2 / 3)
    assert metrics["answer_rate"] == pytest.approx(2 / 3)
    # The means over items are the per-item values' means.
    assert item_metrics(records[2]) == {"accuracy": 1.0, "avg_turns": 3.0, "tool_usage_rate": 1.0, "answer_rate": 1.0}
    assert item_metrics(records[1])["tool_usage_rate"] == 0.0 and item_metrics(records[1])["answer_rate"] == 0.0
    assert metrics["accuracy/easy"] == 0.5 and metrics["accuracy/mbpp"] == 1.0
    assert (metrics["calls/calc"], metrics["errors/calc"], metrics["calls/python"], metrics["errors/python"]) == \
        (2.0, 1.0, 1.0, 1.0)
    # pass@1 = mean(c / n) = (0.3 + 0 + 1) / 3; pass@10 with n = 10: 1 when any sample passed.
    assert metrics["pass@1"] == pytest.approx(1.3 / 3)
    assert metrics["pass@10"] == pytest.approx(2 / 3)
    fewer = [{**record, "sample_correct": record["sample_correct"][:5]} for record in records]
    assert "pass@10" not in tool_use_metrics(fewer) and tool_use_metrics(fewer)["pass@1"] == pytest.approx(1.6 / 3)


def test_config_rejects_sampling_without_temperature():
    with pytest.raises(ValueError, match="temperature"):
        ToolUseConfig(num_samples=4, temperature=0.0)


# ---------------------------------------------------------------- problems

def test_easy_sides_are_disjoint_fixed_and_solvable_by_their_reference():
    held, train_side = load_problems(["easy"]), load_problems(["easy"], heldout=False)
    assert len(held) + len(train_side) == 2000
    assert not {p.question for p in held} & {p.question for p in train_side}
    assert load_problems(["easy"], limit=5) == load_problems(["easy"], limit=5)
    assert all(calculate(p.reference) == p.answer for p in held[:50])
    with pytest.raises(ValueError, match="unknown tool-use sources"):
        load_problems(["swebench"])


def test_hard_sides_follow_the_task_world_split_and_need_the_calculator():
    from forge.data import taskworld

    held, train_side = load_problems(["hard"]), load_problems(["hard"], heldout=False)
    assert len(held) == len(train_side) == 1000
    canonical = {side: {p.id.split("/", 3)[3] for p in problems} for side, problems in (("held", held),
                                                                                         ("train", train_side))}
    assert not canonical["held"] & canonical["train"]
    # The task world's own split: no held-out hard problem is on its train side, whatever its seed.
    assert all(taskworld.is_heldout(c) for c in canonical["held"]) and not any(
        taskworld.is_heldout(c) for c in canonical["train"])
    assert load_problems(["hard"], limit=5) == load_problems(["hard"], limit=5)
    assert all(calculate(p.reference) == p.answer and p.reference in p.question for p in held)
    # Multi-digit: the larger operand of every product has 3 digits or more, of every sum 4.
    assert min(max(int(x) for x in p.reference.split("*")) for p in held if "*" in p.reference) >= 100
    assert min(max(int(x) for x in p.reference.split("+")) for p in held if "+" in p.reference) >= 1000
    assert sum("*" in p.reference for p in held) == 700 and sum("+" in p.reference for p in held) == 300
    transcript = demonstrations(held[:1], FAST)[held[0].id]
    assert transcript == f"<calc>{held[0].reference}</calc>\n<result>{held[0].answer}</result>\n" \
                         f"<answer>{held[0].answer}</answer>"


def test_accuracy_intervals_pair_the_variants_with_the_incumbent():
    incumbent = [True] * 10 + [False] * 30
    same = accuracy_intervals([incumbent, incumbent], resamples=200, seed=0)
    assert same[0]["accuracy"] == 0.25 and same[1]["difference_interval"] == [0.0, 0.0]
    low, high = same[0]["interval"]
    assert low < 0.25 < high
    # A variant right on 10 more items: the paired interval of the difference excludes 0.
    better = accuracy_intervals([incumbent, [True] * 20 + [False] * 20], resamples=200, seed=0)[1]
    assert better["difference"] == 0.25 and better["difference_interval"][0] > 0
    # Right on one item more and wrong on another: the difference is 0 and its interval straddles 0.
    swapped = accuracy_intervals([incumbent, [False] + [True] * 10 + [False] * 29], resamples=200, seed=0)[1]
    assert swapped["difference"] == 0 and swapped["difference_interval"][0] < 0 < swapped["difference_interval"][1]
    with pytest.raises(ValueError, match="equal, non-zero length"):
        accuracy_intervals([[True], [True, False]])


def test_rotation_subsets_differ_per_iteration_until_the_pool_wraps():
    pool = load_problems(["easy"], heldout=False, limit=30)
    blocks = [rotation_subset(pool, iteration, 10) for iteration in range(4)]
    assert len({p.id for block in blocks[:3] for p in block}) == 30
    assert blocks[3] == blocks[0]


def test_data_sources_follow_the_shared_splits(shared_data):
    gsm_held = load_problems(["gsm8k"], limit=3, data_dir=shared_data)
    assert all(p.id.startswith("gsm8k/test-") for p in gsm_held)
    svamp_held = {p.id for p in load_problems(["svamp"], data_dir=shared_data)}
    svamp_train = {p.id for p in load_problems(["svamp"], heldout=False, data_dir=shared_data)}
    assert svamp_held and svamp_train and not svamp_held & svamp_train
    mbpp = load_problems(["mbpp", "gsm8k"], heldout=False, limit=1, data_dir=shared_data)
    transcripts = demonstrations(mbpp, FAST)
    code = next(p for p in mbpp if p.kind == "code")
    assert code.tests and "<result>All tests passed.</result>" in transcripts[code.id]
    gsm = next(p for p in mbpp if p.source == "gsm8k")
    assert "<calc>" in transcripts[gsm.id] and transcripts[gsm.id].endswith(f"<answer>{gsm.answer}</answer>")


# ---------------------------------------------------------------- the whole loop with a real tiny model

@pytest.fixture(scope="module")
def tiny_trained():
    """A tiny Llama trained briefly on easy train-side transcripts in the benchmark's own format."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from forge.data.tokenizer import train_bpe_tokenizer

    config = ToolUseConfig(max_turns=3, max_new_tokens=24, num_fewshot=0, num_samples=2, batch_size=16)
    examples = training_examples(["easy"], config, INITIAL_TOOL_PROMPT, None, limit=400)
    tokenizer = train_bpe_tokenizer([c + t for c, t in examples], vocab_size=400, seed=0)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, vocab_size=len(tokenizer),
                                         max_position_embeddings=256))
    train(model, tokenizer, examples, steps=150, batch_size=16, lr=3e-3, max_length=256, seed=0)
    return model, tokenizer, config


def test_loop_with_a_tiny_trained_model_uses_the_calculator(tiny_trained, tmp_path):
    model, tokenizer, config = tiny_trained
    problems = load_problems(["easy"], limit=8, seed=7)
    cache = ResultCache(tmp_path)
    result = evaluate_tool_use(model, tokenizer, prompt=INITIAL_TOOL_PROMPT, problems=problems, config=config,
                               cache=cache)
    assert result.n_items == 8 and len(result.records) == 8 and not result.cached
    # Trained on transcripts, the model opens calculator calls that parse: a signal, not a flat zero.
    assert result.metrics["tool_usage_rate"] > 0
    assert result.metrics["calls/calc"] > 0
    for record in result.records:
        assert 1 <= record["turns"] <= config.max_turns and len(record["sample_correct"]) == 2
        if record["correct"]:
            assert calculate(record["answer"]) == next(p.answer for p in problems if p.id == record["id"])
    assert result.metrics == tool_use_metrics(result.records)
    again = evaluate_tool_use(model, tokenizer, prompt=INITIAL_TOOL_PROMPT, problems=problems, config=config,
                              cache=cache)
    assert again.cached and again.metrics == result.metrics
    other = evaluate_tool_use(model, tokenizer, prompt="Always use tools before answering coding questions",
                              problems=problems[:2], config=config, cache=cache)
    assert not other.cached


def test_direct_answers_see_direct_examples_and_make_no_call(tiny_trained):
    model, tokenizer, config = tiny_trained
    problems = load_problems(["easy"], limit=6, seed=7)
    fewshot = load_problems(["easy"], heldout=False, limit=20)
    direct = evaluate_direct(model, tokenizer, prompt=INITIAL_TOOL_PROMPT, problems=problems,
                             config=ToolUseConfig(num_fewshot=1, num_samples=0), fewshot=fewshot)
    assert direct.n_items == 6 and direct.metrics["tool_usage_rate"] == 0 and direct.metrics["avg_turns"] == 1
    for record, problem in zip(direct.records, problems):
        assert record["transcript"] == f"<answer>{record['answer']}</answer>" and not record["calls"]
        assert record["correct"] == (record["answer"] == problem.answer)
    with pytest.raises(ValueError, match="arithmetic problems"):
        evaluate_direct(model, tokenizer, prompt="", problems=[SQUARE], config=config)
