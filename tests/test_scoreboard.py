"""The scoreboard: bootstrap intervals, the gate's boundary, rows of real (tiny) models on actors and in-process."""
import math

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from actors.benchmark_actor import score_model_dirs
from benchmarks.scoreboard import bootstrap_interval, gate_decision, paired_intervals, row_key, score_model
from forge.artifacts import read_manifest, save_model_dir
from forge.config import ScoreboardConfig
from forge.phases.scoring import judge
from forge.data.tokenizer import load_gpt2_tokenizer

SETTINGS = ScoreboardConfig(heldout_chars=600, task_items=6, offline_task_items=5, max_new_tokens=4, tool_items=2,
                            thinking_items=2, speed_prompts=2, speed_tokens=4, bootstrap_resamples=200).settings()
TEXTS = ["The river runs past the old mill and into the valley below the town.",
         "A library keeps books, maps and letters; readers borrow them for two weeks.",
         "Seven plus five is twelve, and twelve minus three is nine.",
         "The garden has roses, tulips and a small pond with fish in it."]


def _row(value, low, high):
    return {"metrics": {"heldout_perplexity": {"value": value, "low": low, "high": high},
                        "task_accuracy": {"value": value, "low": low, "high": high}}}


def test_paired_intervals_weigh_the_tasks_and_pair_the_prompts_item_by_item():
    incumbent = [[1, 0] * 8, [0] * 10]  # task 1: 8 of 16 right; task 2: 0 of 10
    one_more = [[1, 0] * 8, [1] + [0] * 9]  # one more right, on task 2
    all_more = [[1, 0] * 8, [1] * 10]  # every task-2 item more
    tasks = [[incumbent[t], one_more[t], all_more[t]] for t in range(2)]
    entries = paired_intervals(tasks, [3.0, 1.0], resamples=300, seed=0)
    assert [round(entry["value"], 6) for entry in entries] == [0.375, 0.4, 0.625]  # 0.75 * 0.5 + 0.25 * task 2
    assert entries[0]["difference"] == 0.0 and entries[0]["difference_interval"] == [0.0, 0.0]
    assert entries[1]["difference"] == pytest.approx(0.025)
    assert entries[1]["difference_interval"][0] == 0.0  # one item: not beyond noise (the lower bound is not > 0)
    assert entries[2]["difference_interval"] == [pytest.approx(0.25), pytest.approx(0.25)]  # paired: every resample
    for entry in entries:
        assert entry["interval"][0] <= entry["value"] <= entry["interval"][1]
        assert "gain" not in entry  # only on request
    # A gain statistic runs over the same resamples: new - old gives the difference's interval, bit for bit.
    gained = paired_intervals(tasks, [3.0, 1.0], resamples=300, seed=0, gain=lambda new, old: new - old)
    assert [entry["gain_interval"] for entry in gained] == [entry["difference_interval"] for entry in entries]
    relative = paired_intervals(tasks, [3.0, 1.0], resamples=300, seed=0, gain=lambda new, old: new / old - 1)
    assert relative[2]["gain"] == pytest.approx(0.625 / 0.375 - 1)
    assert paired_intervals(tasks, [1.0, 0.0], resamples=50)[2]["difference"] == 0.0  # a weight-0 task counts nothing
    with pytest.raises(ValueError, match="one non-negative weight per task"):
        paired_intervals(tasks, [1.0])
    with pytest.raises(ValueError, match="rows of equal, non-zero length"):
        paired_intervals([[[1, 0], [1]]], [1.0])


def test_bootstrap_is_seeded_and_covers_the_estimate():
    values = np.random.default_rng(0).random(50)
    first = bootstrap_interval([values], np.mean, resamples=300, seed=7, confidence=0.95)
    assert first == bootstrap_interval([values], np.mean, resamples=300, seed=7, confidence=0.95)
    assert first != bootstrap_interval([values], np.mean, resamples=300, seed=8, confidence=0.95)
    assert first[0] < values.mean() < first[1]
    wide = bootstrap_interval([values[:10]], np.mean, resamples=300, seed=7, confidence=0.95)
    assert wide[1] - wide[0] > first[1] - first[0]  # fewer items, wider interval
    assert bootstrap_interval([np.ones(5)], np.mean, resamples=10, seed=0, confidence=0.9) == (1.0, 1.0)
    with pytest.raises(ValueError, match="at least one item"):
        bootstrap_interval([np.array([])], np.mean, resamples=10, seed=0, confidence=0.9)


def test_gate_acts_only_beyond_the_intervals_and_the_tolerance():
    inputs = {"a": _row(100.0, 90.0, 110.0), "b": _row(300.0, 250.0, 350.0)}
    # Perplexity (lower is better): compared with the best input, a; worse only when the output's low end
    # lies above a's high end plus the margin.
    at_edge = gate_decision(_row(130.0, 110.0, 150.0), inputs, "heldout_perplexity", 0.0)
    assert at_edge["best_input"] == "a" and not at_edge["worse"]
    assert gate_decision(_row(130.0, 110.01, 150.0), inputs, "heldout_perplexity", 0.0)["worse"]
    assert not gate_decision(_row(130.0, 119.9, 150.0), inputs, "heldout_perplexity", 0.1)["worse"]
    assert gate_decision(_row(130.0, 120.1, 150.0), inputs, "heldout_perplexity", 0.1)["worse"]
    # Accuracy (higher is better): the best input is b; worse when the output's high end is below b's low end.
    assert not gate_decision(_row(0.2, 0.1, 250.0), inputs, "task_accuracy", 0.0)["worse"]
    assert gate_decision(_row(0.2, 0.1, 249.9), inputs, "task_accuracy", 0.0)["worse"]
    assert gate_decision(_row(math.nan, math.nan, math.nan), inputs, "heldout_perplexity", 0.0)["worse"]
    with pytest.raises(ValueError, match="missing"):
        gate_decision(_row(1, 1, 1), inputs, "tool_accuracy", 0.0)


def _figures(perplexity, accuracy):
    """A row from (value, low, high) of held-out perplexity and task accuracy."""
    return {"metrics": {"heldout_perplexity": dict(zip(("value", "low", "high"), perplexity)),
                        "task_accuracy": dict(zip(("value", "low", "high"), accuracy))}}


def test_the_gate_also_judges_task_accuracy():
    inputs = {"a": _figures((100, 90, 110), (0.2, 0.1, 0.3)), "b": _figures((120, 110, 130), (0.33, 0.24, 0.43))}
    # Better perplexity than every input, but every answer lost: worse on task accuracy, so the input that
    # answers best (b, not a, the best on perplexity) is handed on.
    lost = judge(_figures((80, 70, 90), (0.0, 0.0, 0.0)), inputs, "heldout_perplexity", ["task_accuracy"], 0.0)
    assert lost["worse"] and lost["worse_on"] == ["task_accuracy"] and lost["best_input"] == "b"
    assert lost["metric"] == "heldout_perplexity" and not lost["by_metric"]["heldout_perplexity"]["worse"]
    # The boundary: the output's high end at b's low end is not worse, just below it is.
    assert not judge(_figures((80, 70, 90), (0.1, 0.0, 0.24)), inputs, "heldout_perplexity", ["task_accuracy"],
                     0.0)["worse"]
    assert judge(_figures((80, 70, 90), (0.1, 0.0, 0.2399)), inputs, "heldout_perplexity", ["task_accuracy"],
                 0.0)["worse"]
    # Without the further figure, perplexity alone decides.
    alone = judge(_figures((80, 70, 90), (0.0, 0.0, 0.0)), inputs, "heldout_perplexity", [], 0.0)
    assert not alone["worse"] and alone["best_input"] == "a" and list(alone["by_metric"]) == ["heldout_perplexity"]
    # Worse on both: the primary figure's best input.
    both = judge(_figures((200, 190, 210), (0.0, 0.0, 0.0)), inputs, "heldout_perplexity", ["task_accuracy"], 0.0)
    assert both["worse_on"] == ["heldout_perplexity", "task_accuracy"] and both["best_input"] == "a"


def _accuracy_row(items):
    """A row whose task accuracy has per-item scores (wide own intervals, as on the scoreboard's 90 items)."""
    value = float(np.mean(items))
    return {"metrics": {"task_accuracy": {"value": value, "low": value - 0.1, "high": value + 0.1,
                                          "items": {"taskworld_easy": list(items)}}}}


def test_a_passed_gate_shows_the_change_on_the_same_items_and_names_a_drop():
    from forge.phases.scoring import console_lines
    from forge.report import _worse_on_same_items

    before = [1.0] * 20 + [0.0] * 20  # 0.5
    inputs = {"input": _accuracy_row(before)}
    bootstrap = {"resamples": 300, "seed": 0, "confidence": 0.95}
    # Six answers lost and none gained: 0.35, inside the gate's overlapping intervals, below 0 on the same items.
    dropped = _accuracy_row([0.0] * 6 + [1.0] * 14 + [0.0] * 20)
    decision = judge(dropped, inputs, "task_accuracy", [], 0.0, **bootstrap)
    change = decision["by_metric"]["task_accuracy"]["paired_change"]
    assert not decision["worse"] and change["value"] == pytest.approx(-0.15) and change["high"] < 0
    lines = console_lines("curriculum", {"models": {}, "gate": {"model": decision}}, "task_accuracy")
    assert "change on the same items -0.150 [" in lines[0]
    assert lines[1].startswith("[forge] curriculum: note: model is worse than input input on the same items: "
                               "task_accuracy -0.150 [")
    assert _worse_on_same_items(decision).startswith("; worse on the same items: task_accuracy -0.150 [")
    # The boundary: one answer lost of 40 leaves resamples that draw none of it, so the interval reaches 0: no note.
    one = judge(_accuracy_row([0.0] + [1.0] * 19 + [0.0] * 20), inputs, "task_accuracy", [], 0.0, **bootstrap)
    assert one["paired_change"]["high"] == 0.0
    assert len(console_lines("curriculum", {"models": {}, "gate": {"model": one}}, "task_accuracy")) == 1
    assert _worse_on_same_items(one) == ""
    # Without per-item scores on either side (a figure of another kind, or other items) there is no paired change.
    assert gate_decision(_row(0.5, 0.4, 0.6), inputs, "task_accuracy", 0.0)["paired_change"] is None
    assert gate_decision(_accuracy_row(before[:-1]), inputs, "task_accuracy", 0.0)["paired_change"] is None


def _perplexity_row(documents):
    """A row whose held-out perplexity has per-document NLL and tokens (a wide own interval)."""
    nll, tokens = (sum(column) for column in zip(*documents))
    value = math.exp(nll / tokens)
    return {"metrics": {"heldout_perplexity": {"value": value, "low": value / 3, "high": value * 3,
                                               "documents": [list(row) for row in documents]}}}


def test_a_perplexity_changes_relatively_on_the_same_documents():
    from forge.phases.scoring import console_lines

    documents = [(100.0, 50.0), (300.0, 100.0), (150.0, 60.0), (90.0, 40.0)]
    inputs = {"input": _perplexity_row(documents)}
    bootstrap = {"resamples": 300, "seed": 0, "confidence": 0.95}
    # Every document 0.1 nats per token worse: exp(0.1) - 1 = +10.5% on every resample, the gate still passing it.
    worse = judge(_perplexity_row([(nll + 0.1 * tokens, tokens) for nll, tokens in documents]), inputs,
                  "heldout_perplexity", [], 0.0, **bootstrap)
    change = worse["paired_change"]
    assert not worse["worse"] and change["relative"]
    assert change["value"] == pytest.approx(math.exp(0.1) - 1) == pytest.approx(change["low"])
    assert "heldout_perplexity +10.5% [+10.5%, +10.5%]" in console_lines(
        "bitnet", {"models": {}, "gate": {"model": worse}}, "heldout_perplexity")[1]
    # Better on every document: a negative change, no note.
    better = judge(_perplexity_row([(nll - 0.1 * tokens, tokens) for nll, tokens in documents]), inputs,
                   "heldout_perplexity", [], 0.0, **bootstrap)
    assert better["paired_change"]["high"] < 0
    assert len(console_lines("bitnet", {"models": {}, "gate": {"model": better}}, "heldout_perplexity")) == 1
    # Another tokenizer's tokens, or an infinite NLL: not the same items, no paired change.
    assert judge(_perplexity_row([(nll, tokens + 1) for nll, tokens in documents]), inputs, "heldout_perplexity",
                 [], 0.0, **bootstrap)["paired_change"] is None
    assert judge(_perplexity_row([(math.inf, 50.0)] + documents[1:]), inputs, "heldout_perplexity", [], 0.0,
                 **bootstrap)["paired_change"] is None


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, one_torch_thread):
    tokenizer = load_gpt2_tokenizer()
    out = tmp_path_factory.mktemp("board")
    dirs = {}
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=len(tokenizer), n_positions=256))
        dirs[seed] = save_model_dir(model, tokenizer, out / f"m{seed}", phase="test")
    return tokenizer, dirs


def test_rows_are_fixed_per_model_and_change_with_the_model(two_models, ray_session):
    from forge.artifacts import load_model_dir

    _, dirs = two_models
    model, tokenizer = load_model_dir(dirs[0])
    row = score_model(model, tokenizer, dirs[0], SETTINGS, heldout_texts=TEXTS, wikitext_texts=[], data_dir=None)
    figures = row["metrics"]
    assert {"heldout_perplexity", "task_accuracy", "task_accuracy/taskworld_easy", "tool_accuracy",
            "tokens_per_s", "size_mb"} <= set(figures)
    assert "thinking_usage" not in figures  # the GPT-2 tokenizer has no thinking tokens
    for figure in figures.values():
        assert figure["low"] <= figure["value"] <= figure["high"]
    assert figures["heldout_perplexity"]["n"] == len(TEXTS)
    # No data folder: the task world's easy held-out problems, offline_task_items of them (task_items is for data).
    assert figures["task_accuracy"]["tasks"] == ["taskworld_easy"]
    assert 0.2 < figures["task_accuracy/taskworld_easy"]["guess_accuracy"] < 0.3  # a uniform guess on these items
    assert figures["task_accuracy"]["n"] == SETTINGS.offline_task_items
    # ... and the multi-digit problems only the calculator solves, with a turn for the call and one for the answer.
    assert figures["tool_accuracy"]["sources"] == ["hard"] and figures["tool_accuracy"]["n"] == SETTINGS.tool_items
    # Each accuracy keeps its per-item scores, so two rows compare on the same items.
    assert np.mean(figures["task_accuracy"]["items"]["taskworld_easy"]) == figures["task_accuracy"]["value"]
    assert len(figures["tool_accuracy"]["items"]["tool"]) == SETTINGS.tool_items
    assert len(figures["heldout_perplexity"]["documents"]) == len(TEXTS)
    assert SETTINGS.tool_max_turns == 2
    # The same model on a Ray benchmark actor gives the same item figures; another model does not.
    remote = score_model_dirs({"same": dirs[0], "other": dirs[1]}, SETTINGS, heldout_texts=TEXTS, wikitext_texts=[],
                              data_dir=None, device="cpu")
    for key in ("heldout_perplexity", "task_accuracy", "tool_accuracy", "size_mb"):
        assert remote["same"]["metrics"][key]["value"] == pytest.approx(figures[key]["value"], rel=1e-6)
    assert remote["other"]["metrics"]["heldout_perplexity"]["value"] != pytest.approx(
        figures["heldout_perplexity"]["value"], rel=1e-6)
    items = {"heldout": "x"}
    assert row_key(read_manifest(dirs[0]), SETTINGS, items) != row_key(read_manifest(dirs[1]), SETTINGS, items)
    assert row_key(read_manifest(dirs[0]), SETTINGS, items) != row_key(read_manifest(dirs[0]), SETTINGS, {"heldout": "y"})


@pytest.mark.parametrize("override", ["scoreboard.tolerance=0.1", "scoreboard.heldout_chars=3000",
                                      "scoreboard.primary_metric=task_accuracy", "scoreboard.gate=false"])
def test_scoreboard_settings_are_in_a_finished_phases_fingerprint(override):
    from forge.config import load_pipeline_config
    from forge.pipeline import phase_config_hash, scoreboard_hash

    base, changed = load_pipeline_config("tiny"), load_pipeline_config("tiny", overrides=[override])
    unrelated = load_pipeline_config("tiny", overrides=["cognate.train.grad_clip=0.5", "tracking.wandb_mode=online"])
    # A scoreboard change re-scores and re-gates finished phases (forge.pipeline) but does not redo them.
    assert scoreboard_hash(changed) != scoreboard_hash(base)
    assert all(phase_config_hash(changed, p) == phase_config_hash(base, p) for p in base.phases)
    assert scoreboard_hash(unrelated) == scoreboard_hash(base)


def test_thinking_usage_asks_held_out_multi_digit_task_world_problems():
    """Thinking usage is measured where Quiet-STaR's traces are meant to help: held-out problems of the
    multi-digit cells, never a train-side problem, the same ones every time."""
    from benchmarks.scoreboard import thinking_problems
    from forge.data import taskworld
    from forge.quietstar.taskworld import CELLS

    settings = ScoreboardConfig(thinking_items=12).settings()
    problems = thinking_problems(settings)
    assert problems == thinking_problems(settings) and len(problems) == 12
    asked = {question for question, _ in problems}
    held_out = {item.question: item for family, level in CELLS
                for item in taskworld.generate_items(400, split="heldout", seed=settings.seed, families=[family],
                                                     levels=[level], unique=True)}
    assert asked <= set(held_out)
    assert {held_out[q].family for q in asked} == {family for family, _ in CELLS}  # the cells in turn
    assert all(taskworld.is_heldout(held_out[q].canonical) for q in asked)
