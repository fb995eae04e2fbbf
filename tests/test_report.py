"""The report's plots from a run's files (the whole report on a real run: tests/test_pipeline.py)."""
import json

import pytest

from forge.plots import grouped_bars, pyplot


def test_grouped_bars_label_each_value_and_say_when_one_was_not_measured():
    plt = pyplot()
    fig, ax = plt.subplots()
    grouped_bars(ax, ["before", "after"], [("synthetic", [0.25, None]), ("gsm8k", [0.5, 1.0])],
                 ylabel="share", title="accuracy")
    assert [t.get_text() for t in ax.texts] == ["0.25", "n/a", "0.50", "1.00"]
    assert [p.get_height() for p in ax.patches] == [0.25, 0.0, 0.5, 1.0]
    assert [p.get_x() + p.get_width() / 2 for p in ax.patches] == pytest.approx([-0.2, 0.8, 0.2, 1.2])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["before", "after"] and ax.get_ylim() == (0, 1.05)
    plt.close(fig)


def test_grouped_bars_draw_each_interval_and_label_the_value_above_it():
    plt = pyplot()
    fig, ax = plt.subplots()
    grouped_bars(ax, ["level 1", "level 2"], [("before", [0.1, None]), ("after", [0.4, 0.3])], ylabel="share",
                 title="accuracy", intervals=[[[0.0, 0.2], None], [[0.3, 0.5], None]])
    assert [t.get_text() for t in ax.texts] == ["0.10", "n/a", "0.40", "0.30"]
    # Each label sits at the top of its value's interval (or of its bar where there is none).
    assert [t.xy[1] for t in ax.texts] == pytest.approx([0.2, 0.0, 0.5, 0.3])
    whiskers = [segments for collection in ax.collections for segments in collection.get_segments()]
    spans = sorted((round(float(s[0][1]), 6), round(float(s[1][1]), 6)) for s in whiskers if len(s) == 2)
    assert (0.0, 0.2) in spans and (0.3, 0.5) in spans
    plt.close(fig)


def test_quietstar_and_curriculum_plots_come_from_the_run_files(tmp_path):
    from forge.report import build_report

    (tmp_path / "quietstar").mkdir()
    (tmp_path / "curriculum" / "model").mkdir(parents=True)
    (tmp_path / "config.json").write_text("{}")
    stages = {"before": {"synthetic_accuracy": 0.1, "gsm8k_accuracy": 0.0},
              "step2": {"synthetic_accuracy": 0.3, "gsm8k_accuracy": None, "synthetic_thinking_usage": 0.8}}
    (tmp_path / "quietstar" / "quietstar_report.json").write_text(json.dumps({"stages": stages}))
    levels = [{"level": 1, "accuracy_before": 0.1, "accuracy_after_training": 0.4, "accuracy_after_baking": 0.5}]
    (tmp_path / "curriculum" / "model" / "manifest.json").write_text(json.dumps({"levels": levels}))
    markdown, _ = build_report(tmp_path)
    for name in ("quietstar_accuracy.png", "curriculum_levels.png"):
        assert (tmp_path / "report" / name).stat().st_size > 10_000
        assert f"(report/{name})" in markdown.read_text()


def test_quietstar_figure_shows_each_stage_with_its_thoughts_removed_beside_it():
    from forge.report import quietstar_figure

    stages = {"before": {"taskworld_accuracy": 0.02},
              "step1": {"taskworld_accuracy": 0.11, "taskworld_accuracy_no_thinking": 0.03,
                        "taskworld_thinking_usage": 0.99},
              "step2": {"taskworld_accuracy": 0.12, "taskworld_accuracy_no_thinking": 0.05,
                        "taskworld_thinking_usage": 0.98}}
    ax = quietstar_figure({"stages": stages, "eval_set": "taskworld"}).axes[0]
    assert [t.get_text() for t in ax.texts] == ["0.02", "0.11", "0.12", "n/a", "0.03", "0.05"]
    labels = ax.get_legend_handles_labels()[1]
    assert "taskworld accuracy, thoughts removed" in labels and "thinking usage (share of answers)" in labels


def test_cognate_loss_figure_draws_the_specialists_after_the_trunk_they_fork_from():
    from forge.report import cognate_loss_figure

    records = [{"source": "cognate-trunk", "step": step, "train/loss": 1.1, "train/ce": 1.0} for step in (1, 2, 800)]
    records += [{"source": "cognate-reasoning", "step": step, "train/loss": 2.1, "train/ce": 2.0} for step in (1, 80)]
    records += [{"source": "cognate-reasoning", "step": 80, "val/loss": 3.0}]
    lines = {line.get_label(): list(line.get_xdata()) for line in cognate_loss_figure(records).axes[0].get_lines()}
    assert lines["trunk train/ce"] == [1, 2, 800]
    assert lines["reasoning train/ce"] == [801, 880] and lines["reasoning val/loss"] == [880]
    assert lines["the specialists fork from the trunk"] == [800, 800]
    alone = cognate_loss_figure([{"source": "cognate-reasoning", "step": 5, "train/loss": 2.0}]).axes[0].get_lines()
    assert [list(line.get_xdata()) for line in alone] == [[5]]  # no trunk: nothing to fork from, no offset
    assert cognate_loss_figure([{"source": "cognate-x", "step": 1}]) is None


def test_the_phases_table_gives_durations_to_a_tenth_of_a_second_and_names_an_unfinished_phase(tmp_path):
    import json

    from forge.report import Run, phases_markdown

    (tmp_path / "cognate").mkdir()
    (tmp_path / "cognate" / "manifest.json").write_text(json.dumps(
        {"status": "complete", "wall_time_s": 545.54, "summary": {"scoreboard": {"wall_s": 9.8}}}))
    (tmp_path / "evomerge").mkdir()  # started, no manifest yet
    assert phases_markdown(Run(tmp_path))[2:] == ["| cognate | complete | 545.5 s | 9.8 s |",
                                                  "| evomerge | interrupted or running (no manifest) | - | - |"]


def test_the_notes_list_each_phases_notes_in_the_pipelines_order(tmp_path):
    from forge.report import Run, notes_markdown

    for phase, notes in (("curriculum", ["the output is float"]), ("quietstar", ["Step 2 rolled back", "second"]),
                         ("bitnet", [])):
        (tmp_path / phase).mkdir()
        (tmp_path / phase / "manifest.json").write_text(json.dumps({"status": "complete",
                                                                     "summary": {"notes": notes}}))
    assert notes_markdown(Run(tmp_path)) == ["- **quietstar**: Step 2 rolled back", "- **quietstar**: second",
                                             "- **curriculum**: the output is float"]
    (tmp_path / "quietstar" / "manifest.json").write_text(json.dumps({"status": "complete", "summary": {}}))
    (tmp_path / "curriculum" / "manifest.json").unlink()  # a phase without a manifest (yet) has no notes
    assert notes_markdown(Run(tmp_path)) == ["No phase left a note."]


def test_the_criteria_table_names_a_summarys_criteria_without_their_key_and_deeper_ones_by_path(tmp_path):
    from forge.criteria import criterion
    from forge.report import Run, criteria_markdown

    (tmp_path / "bitnet").mkdir()
    (tmp_path / "bitnet" / "manifest.json").write_text(json.dumps({"status": "complete", "summary": {
        "criteria": {"accuracy_drop": criterion(0.05, "<", 0.1), "examples": criterion(400, ">=", 20_000)},
        "step2": {"check": criterion(0.2, ">=", 0.5)}}}))
    assert criteria_markdown(Run(tmp_path))[2:] == ["| bitnet | accuracy_drop | 0.050 | < 0.1 | met |",
                                                    "| bitnet | examples | 400 | >= 20000 | **missed** |",
                                                    "| bitnet | step2.check | 0.200 | >= 0.5 | **missed** |"]

