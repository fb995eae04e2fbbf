"""The run report: ``python -m forge.report RUN_DIR`` writes ``RUN_DIR/report.md`` and ``RUN_DIR/report.html``.

Built from the run's files alone (also of an interrupted run: whatever a phase has written so far is
shown, what is missing is said to be missing): the scoreboard (``scoreboard.json``) as one row per phase
with deltas against the previous phase and the gate's decisions, every spec criterion found in the phase
manifests' summaries (met or missed, with its measured value), and PNG plots under ``RUN_DIR/report/``:
Cognate training loss, EvoMerge fitness per generation against the parents, Quiet-STaR accuracy with and
without thoughts, BitNet accuracy per staged block and size, Phase 5 accuracy per level, Phase 6's A/B
trajectory. The HTML embeds the PNGs (base64), so it is one self-contained file. The pipeline rebuilds
the report after every phase.
"""
from __future__ import annotations

import argparse
import base64
import html
import math
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Mapping

from benchmarks.scoreboard import LOWER_IS_BETTER, worse_on_same_items
from forge.abcycles.driver import trajectory_figure
from forge.artifacts import atomic_write_bytes, read_json
from forge.criteria import verdict
from forge.phases import PHASES
from forge.plots import grouped_bars, pyplot, save_png

PLOT_DIR = "report"
METRIC_ORDER = ("heldout_perplexity", "wikitext_perplexity", "task_accuracy", "tool_accuracy", "thinking_usage",
                "tokens_per_s", "size_mb")


def _json(path: Path) -> Any | None:
    return read_json(path) if path.is_file() else None


def _number(x: float | None) -> str:
    if x is None:
        return "-"
    if isinstance(x, int):  # a count (e.g. reasoning examples) reads as one
        return str(x)
    if not math.isfinite(x):
        return str(x)
    if x != 0 and (abs(x) >= 1e4 or abs(x) < 1e-2):
        return f"{x:.3g}"
    return f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}"


def _figure(figure: Mapping[str, Any] | None) -> str:
    if figure is None:
        return "-"
    return f"{_number(figure['value'])} [{_number(figure['low'])}, {_number(figure['high'])}]"


# ------------------------------------------------------------------------------------------ the run's files

class Run:
    """What a run directory holds, read once."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)
        if not self.dir.is_dir():
            raise FileNotFoundError(f"{self.dir} is not a run directory (it does not exist)")
        self.config = _json(self.dir / "config.json") or {}
        self.manifests = {p: _json(self.dir / p / "manifest.json") for p in PHASES}
        self.phases = [p for p in PHASES if (self.dir / p).is_dir()]
        if not self.phases and not (self.dir / "config.json").is_file():
            raise FileNotFoundError(f"{self.dir} holds no config.json and no phase folder: not a run directory "
                                    "(give the folder runs/<name> that python -m forge.pipeline wrote)")
        self.scoreboard = _json(self.dir / "scoreboard.json") or {"phases": {}}
        # The file's keys are sorted (atomic_write_json); the pipeline's order is PHASES'.
        self.scoreboard["phases"] = {p: self.scoreboard["phases"][p] for p in PHASES if p in self.scoreboard["phases"]}

    def summary(self, phase: str) -> dict[str, Any]:
        manifest = self.manifests.get(phase) or {}
        return manifest.get("summary") or {}


# ------------------------------------------------------------------------------------------ the tables

def scoreboard_rows(run: Run) -> list[dict[str, Any]]:
    """One entry per phase model row: phase, model, figures, handed-on flag, gate decision."""
    rows = []
    for phase, entry in run.scoreboard.get("phases", {}).items():
        for name, row in entry["models"].items():
            rows.append({"phase": phase, "model": name, "metrics": row["metrics"],
                         "gate": (entry.get("gate") or {}).get(name), "path": row["path"],
                         "handed_on": entry.get("handed_on", {}).get(name)})
    return rows


def _previous_handed_on(run: Run, phase: str, metric: str) -> dict[str, Any] | None:
    """The row of what the previous scored phase handed on (its best model by ``metric`` when several)."""
    phases = list(run.scoreboard.get("phases", {}))
    index = phases.index(phase)
    if index == 0:
        return None
    entry = run.scoreboard["phases"][phases[index - 1]]
    candidates = []
    for name, row in entry["models"].items():
        gate = (entry.get("gate") or {}).get(name)
        if gate and gate["worse"]:
            candidates.append(entry["input_rows"][gate["best_input"]])
        else:
            candidates.append(row)
    sign = 1 if metric in LOWER_IS_BETTER else -1
    return min(candidates, key=lambda r: sign * r["metrics"][metric]["value"]) if candidates else None


def model_label(run: Run, row: Mapping[str, Any]) -> str:
    """The row's model name, saying when the gate handed EvoMerge's best parent on (no merge beat it)."""
    gate = row["gate"]
    if row["phase"] == "evomerge" and gate and gate["worse"]:
        return f"{row['model']} (parent {gate['best_input']} handed on: no merge beat it)"
    return row["model"]


def scoreboard_markdown(run: Run) -> list[str]:
    board = run.scoreboard
    if not board.get("phases"):
        return ["No scoreboard yet (scoreboard.json is missing: no phase has finished with the scoreboard on)."]
    metric = next(iter(board["phases"].values()))["primary_metric"]
    present = [m for m in METRIC_ORDER if any(m in r["metrics"] for r in scoreboard_rows(run))]
    settings = board.get("settings", {})
    lines = [f"Primary metric: **{metric}** ({'lower' if metric in LOWER_IS_BETTER else 'higher'} is better). "
             f"Each figure: value [{settings.get('confidence', 0.95):.0%} bootstrap interval over items], "
             f"seed {settings.get('seed')}, {settings.get('bootstrap_resamples')} resamples. "
             f"The gate also judges {', '.join(settings.get('gate_also_on') or []) or 'nothing else'}. "
             "Δ: against what the previous phase handed on.", "",
             "| phase | model | " + " | ".join(present) + " | gate |",
             "|---|---|" + "---|" * len(present) + "---|"]
    for row in scoreboard_rows(run):
        previous = _previous_handed_on(run, row["phase"], metric)
        cells = []
        for key in present:
            figure = row["metrics"].get(key)
            text = _figure(figure)
            if figure is not None and previous is not None and key in previous["metrics"]:
                delta = figure["value"] - previous["metrics"][key]["value"]
                text += f" (Δ {'+' if delta >= 0 else ''}{_number(delta)})"
            cells.append(text)
        gate = row["gate"]
        verdict = ("-" if gate is None else
                   f"**worse ({', '.join(gate.get('worse_on') or [metric])}): handed on input {gate['best_input']}**"
                   if gate["worse"] else "passed" + _worse_on_same_items(gate))
        lines.append(f"| {row['phase']} | {model_label(run, row)} | " + " | ".join(cells) + f" | {verdict} |")
    return lines


def _worse_on_same_items(gate: Mapping[str, Any]) -> str:
    """``; worse on the same items: task_accuracy -0.133 [-0.211, -0.056]`` for a passed gate whose paired change of
    a figure lies wholly on its worse side (the gate compares the figures' own intervals)."""
    worse = worse_on_same_items(gate.get("by_metric", {}))
    return f"; worse on the same items: {', '.join(worse)}" if worse else ""


def spec_criteria(run: Run) -> list[dict[str, Any]]:
    """Every ``{"met": bool, "value": ...}`` entry found in the phase summaries, with its phase and path (a
    criterion of the summary's ``criteria`` by its name alone)."""
    found = []

    def walk(phase: str, node: Any, path: list[str]) -> None:
        if isinstance(node, Mapping):
            if isinstance(node.get("met"), bool):
                name = path[1:] if path[:1] == ["criteria"] else path  # the summary's own criteria: by name
                found.append({"phase": phase, "criterion": ".".join(name), "value": node.get("value"),
                              "interval": node.get("interval"), "required": node.get("required", ""),
                              "met": node["met"], "out_of_reach": node.get("out_of_reach")})
                return
            for key, value in node.items():
                if key != "scoreboard":
                    walk(phase, value, [*path, str(key)])

    for phase in run.phases:
        summary = run.summary(phase)
        walk(phase, summary, [])
    return found


def criteria_tally(run_dir: Path) -> str | None:
    """``K of N met (phase k/n, ...)`` over every phase's spec criteria (the report's table), or None when
    no phase recorded any."""
    criteria = spec_criteria(Run(run_dir))
    if not criteria:
        return None
    per_phase: dict[str, list[int]] = {}
    for c in criteria:
        tally = per_phase.setdefault(c["phase"], [0, 0])
        tally[0] += bool(c["met"])
        tally[1] += 1
    met = sum(tally[0] for tally in per_phase.values())
    return f"{met} of {len(criteria)} met (" + ", ".join(f"{phase} {m}/{n}" for phase, (m, n) in per_phase.items()) + ")"


def criteria_markdown(run: Run) -> list[str]:
    criteria = spec_criteria(run)
    if not criteria:
        return ["No spec criteria recorded yet."]
    lines = ["| phase | criterion | measured | required | |", "|---|---|---|---|---|"]
    for c in criteria:
        value = _number(c["value"]) if isinstance(c["value"], (int, float)) and not isinstance(c["value"], bool) \
            else "-" if c["value"] is None else str(c["value"])
        if c["interval"]:
            value += " [{}, {}]".format(*map(_number, c["interval"]))
        shown = verdict(c)
        lines.append(f"| {c['phase']} | {c['criterion']} | {value} | {c['required']} | "
                     f"{shown if c['met'] else f'**{shown}**'} |")
    return lines


def notes_markdown(run: Run) -> list[str]:
    """Each phase's ``notes`` (what a reader needs beside its figures: what it handed on unchanged, in what form),
    one bullet each, in the pipeline's order."""
    lines = [f"- **{phase}**: {note}" for phase in run.phases for note in run.summary(phase).get("notes", [])]
    return lines or ["No phase left a note."]


def phases_markdown(run: Run) -> list[str]:
    lines = ["| phase | status | wall time | scoreboard time |", "|---|---|---|---|"]
    for phase in run.phases:
        manifest = run.manifests.get(phase)
        if manifest is None:
            lines.append(f"| {phase} | interrupted or running (no manifest) | - | - |")
            continue
        board = (manifest.get("summary") or {}).get("scoreboard") or {}
        wall = manifest.get("wall_time_s")
        lines.append(f"| {phase} | {manifest.get('status')} | {_seconds(wall)} | {_seconds(board.get('wall_s'))} |")
    return lines


def _seconds(value: float | None) -> str:
    """A duration to a tenth of a second, as the console gives them (``9.8 s``, not ``9.800 s``)."""
    return "-" if value is None else f"{value:.1f} s"


# ------------------------------------------------------------------------------------------ the plots

def plot_cognate_loss(run: Run, out: Path) -> Path | None:
    from forge.tracking import read_metrics

    path = run.dir / "cognate" / "metrics.jsonl"
    figure = cognate_loss_figure(read_metrics(path)) if path.is_file() else None
    return None if figure is None else save_png(figure, out)


def cognate_loss_figure(records: list[dict[str, Any]]):
    """Every Phase 1 run's training and validation loss (``metrics.jsonl`` records); None without any."""
    from forge.phases.cognate import TRUNK_NAME

    sources = sorted({r.get("source") for r in records if "train/loss" in r or "val/loss" in r} - {None})
    if not sources:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    # The specialists continue from the trunk's weights: their steps are drawn after the trunk's last, where they fork.
    trunk = f"cognate-{TRUNK_NAME}"
    fork = max((r["step"] for r in records if r.get("source") == trunk and "step" in r), default=0)
    for index, source in enumerate(sources):
        colour = f"C{index}"
        offset = fork if source != trunk else 0
        # train/loss adds the auxiliary terms; train/ce is the cross-entropy that val/loss measures.
        key = "train/ce" if any("train/ce" in r for r in records if r.get("source") == source) else "train/loss"
        train = [(offset + r["step"], r[key]) for r in records if r.get("source") == source and key in r]
        val = [(offset + r["step"], r["val/loss"]) for r in records if r.get("source") == source and "val/loss" in r]
        if train:
            ax.plot(*zip(*train), "-", color=colour, label=f"{source.removeprefix('cognate-')} {key}")
        if val:
            ax.plot(*zip(*val), "o--", color=colour, label=f"{source.removeprefix('cognate-')} val/loss")
    if fork:
        ax.axvline(fork, color="grey", linestyle=":", label="the specialists fork from the trunk")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.set_title("Phase 1 Cognate: training loss (each run on its own data mix) and validation loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _evomerge_records(run: Run) -> list[dict[str, Any]]:
    return [read_json(p) for p in sorted((run.dir / "evomerge" / "work" / "generations").glob("gen_*.json"))]


def plot_evomerge(run: Run, out: Path) -> Path | None:
    from forge.phases.evomerge import plot_history

    records = _evomerge_records(run)
    if not records:
        return None
    return plot_history([r["stats"] for r in records], records[0].get("parents", []), out)


def plot_quietstar(run: Run, out: Path) -> Path | None:
    report = _json(run.dir / "quietstar" / "quietstar_report.json")
    return None if report is None else save_png(quietstar_figure(report), out)


def quietstar_figure(report: Mapping[str, Any]):
    """Phase 3's held-out accuracy per stage, with its thoughts removed beside it, and the thinking usage."""
    stages = report["stages"]
    labels = {"before": "before Phase 3\n(no thoughts)", "step1": "after Step 1\n(with thoughts)",
              "step2": "after Step 2\n(with thoughts)"}
    sets = sorted({k.removesuffix("_accuracy") for s in stages.values() for k, v in s.items()
                   if k.endswith("_accuracy") and v is not None})
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    names = [s for s in ("before", "step1", "step2") if s in stages]
    series = []
    for name in sets:
        series.append((f"{name} accuracy", [stages[s].get(f"{name}_accuracy") for s in names]))
        removed = [stages[s].get(f"{name}_accuracy_no_thinking") for s in names]
        if any(value is not None for value in removed):  # the anti-theater ablation: the same model, thoughts removed
            series.append((f"{name} accuracy, thoughts removed", removed))
    grouped_bars(ax, [labels[s] for s in names], series, ylabel="share of held-out problems",
                 title="Phase 3 Quiet-STaR: held-out accuracy without and with thoughts")
    main_set = report.get("eval_set", "synthetic")  # reports before issue 18 measured on the synthetic set only
    usage = [stages[s].get(f"{main_set}_thinking_usage") for s in names]
    if any(u is not None for u in usage):
        ax.plot(range(len(names)), [u if u is not None else float("nan") for u in usage], "k--o",
                label="thinking usage (share of answers)")
    ax.legend(fontsize=8)
    return fig


def plot_bitnet(run: Run, out: Path) -> Path | None:
    manifest = _json(run.dir / "bitnet" / "model" / "manifest.json")
    if manifest is None or "quantization" not in manifest:
        return None
    q = manifest["quantization"]
    steps = q["steps"]
    plt = pyplot()
    fig, (ax, ax_size) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 1]})
    x = list(range(len(steps)))
    ax.axhline(q["accuracy_before"], color="grey", linestyle="--", label="float model (before)")
    ax.plot(x, [s["accuracy"] for s in steps], "-", color="C0", alpha=0.5)
    for kept, colour, label in ((True, "C2", "block kept quantized"), (False, "C3", "block reverted by the guard")):
        points = [(i, s["accuracy"]) for i, s in zip(x, steps) if s["reverted"] != kept]
        if points:
            ax.scatter(*zip(*points), color=colour, zorder=3, label=label)
    ax.set_xticks(x, [textwrap.fill(s["group"].replace("model.", ""), 24) for s in steps], fontsize=8)
    ax.set_ylabel("guard metric (share of the float model's)")
    ax.set_title(textwrap.fill(f"Phase 4 BitNet after each staged block. Guard metric: "
                               f"{q.get('guard_metric', 'guard metric')}", 90), fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    sizes = [q["weight_bytes_before"] / 1e6, q["weight_bytes_after"] / 1e6]
    bars = ax_size.bar(["before", "after"], sizes, color=["grey", "C0"])
    ax_size.bar_label(bars, fmt="%.2f MB", fontsize=8)
    ax_size.set_ylim(0, max(sizes) * 1.2)
    ax_size.set_title(f"weights: {q['compression_ratio']:.2f}x smaller")
    ax_size.set_ylabel("MB")
    return save_png(fig, out)


def _curriculum_levels(run: Run) -> list[dict[str, Any]]:
    manifest = _json(run.dir / "curriculum" / "model" / "manifest.json")
    if manifest is not None:
        return manifest.get("levels", [])
    # Interrupted: the last finished level's checkpoint holds the records so far.
    for path in sorted((run.dir / "curriculum" / "work").glob("level_*/manifest.json"), reverse=True):
        return read_json(path).get("curriculum_resume", {}).get("records", [])
    return []


def plot_curriculum(run: Run, out: Path) -> Path | None:
    levels = _curriculum_levels(run)
    if not levels:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    keys = (("accuracy_before", "before the level"), ("accuracy_after_training", "after training"),
            ("accuracy_after_baking", "after value baking"))
    grouped_bars(ax, [f"level {level['level']}" for level in levels],
                 [(label, [level[key] for level in levels]) for key, label in keys],
                 ylabel="held-out accuracy of the level",
                 title="Phase 5 curriculum: accuracy per level (whiskers: 95% interval over its items)",
                 intervals=[[level.get(f"{key}_interval") for level in levels] for key, _ in keys])
    if "pass_accuracy" in levels[0]:
        ax.axhline(levels[0]["pass_accuracy"], color="0.3", linestyle="--", linewidth=1,
                   label=f"pass accuracy ({levels[0]['pass_accuracy']:g})")
    ax.legend(fontsize=8)
    return save_png(fig, out)


def _ab_history(run: Run) -> tuple[list[dict[str, Any]], str]:
    trajectory = _json(run.dir / "tool_persona" / "trajectory.json")
    if trajectory is not None:
        return trajectory["history"], trajectory["stop_reason"]
    state = _json(run.dir / "tool_persona" / "work" / "ab_state.json")
    return (state["history"], "interrupted") if state else ([], "")


def plot_tool_persona(run: Run, out: Path) -> Path | None:
    history, stop = _ab_history(run)
    if not history:
        return None
    return save_png(trajectory_figure(history, stop), out)


def plot_scoreboard(run: Run, out: Path) -> Path | None:
    rows = scoreboard_rows(run)
    if not rows:
        return None
    metric = next(iter(run.scoreboard["phases"].values()))["primary_metric"]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    labels, values, errors, colours = [], [], [[], []], []
    for row in rows:
        figure = row["metrics"][metric]
        labels.append(f"{row['phase']}\n{row['model']}")
        values.append(figure["value"])
        errors[0].append(max(figure["value"] - figure["low"], 0))
        errors[1].append(max(figure["high"] - figure["value"], 0))
        colours.append("C3" if row["gate"] and row["gate"]["worse"] else "C0")
    finite = [v for v in values if math.isfinite(v)]
    # A broken model's inf (or nan) has no bar; its label says so.
    labels = [label if math.isfinite(v) else f"{label}\n({v})" for label, v in zip(labels, values)]
    errors = [[e if math.isfinite(e) and math.isfinite(v) else 0.0 for e, v in zip(side, values)] for side in errors]
    values = [v if math.isfinite(v) else 0.0 for v in values]
    ax.bar(range(len(rows)), values, yerr=errors, color=colours, capsize=4)
    if metric in LOWER_IS_BETTER and finite and min(finite) > 0 and max(finite) / min(finite) > 50:
        ax.set_yscale("log")
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel(metric)
    ax.set_title(f"Scoreboard: {metric} per phase output\n(bars: {run.scoreboard.get('settings', {}).get('confidence', 0.95):.0%} interval; red: gated, its input handed on)",
                 fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    return save_png(fig, out)


PLOTS: tuple[tuple[str, str, Callable[[Run, Path], Path | None]], ...] = (
    ("scoreboard.png", "Scoreboard: the primary metric per phase", plot_scoreboard),
    ("cognate_loss.png", "Phase 1: Cognate training loss", plot_cognate_loss),
    ("evomerge_fitness.png", "Phase 2: EvoMerge fitness per generation (parents as baselines)", plot_evomerge),
    ("quietstar_accuracy.png", "Phase 3: Quiet-STaR accuracy with and without thoughts", plot_quietstar),
    ("bitnet_blocks.png", "Phase 4: BitNet guard metric per staged block, and size", plot_bitnet),
    ("curriculum_levels.png", "Phase 5: accuracy per curriculum level", plot_curriculum),
    ("tool_persona_trajectory.png", "Phase 6: A/B trajectory", plot_tool_persona),
)


# ------------------------------------------------------------------------------------------ the documents

def _markdown_to_html(lines: list[str]) -> str:
    """The small Markdown subset the report writes: headings, tables, images, bold, paragraphs."""
    import re

    def inline(text: str) -> str:
        return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text))

    out, table = [], []

    def flush_table() -> None:
        if not table:
            return
        rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table if not set(line) <= set("|-")]
        out.append("<table>" + "".join(
            "<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{inline(c)}</{'th' if i == 0 else 'td'}>" for c in row)
            + "</tr>" for i, row in enumerate(rows)) + "</table>")
        table.clear()

    for line in lines:
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{inline(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("!["):
            alt, src = re.match(r"!\[(.*)\]\((.*)\)", line).groups()
            out.append(f'<p><img alt="{html.escape(alt)}" src="{src}"></p>')
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    flush_table()
    return "\n".join(out)


def build_report(run_dir: Path) -> tuple[Path, Path]:
    """Write report.md, report.html and the PNGs of ``run_dir``; returns the two documents' paths."""
    run = Run(run_dir)
    plot_dir = run.dir / PLOT_DIR
    plot_dir.mkdir(exist_ok=True)
    name = run.config.get("run_name") or run.config.get("preset") or run.dir.name
    lines = [f"# Agent Forge run report: {name}", "",
             f"Run directory: `{run.dir}`. Rebuild: `python -m forge.report {run.dir}`.", "",
             "## Phases", "", *phases_markdown(run), "",
             "## Scoreboard", "", *scoreboard_markdown(run), "",
             "## Spec criteria", "", *criteria_markdown(run), "",
             "## Notes", "", *notes_markdown(run), "",
             "## Plots", ""]
    images: dict[str, Path] = {}
    for filename, title, plot in PLOTS:
        path = plot(run, plot_dir / filename)
        if path is None:
            lines += [f"### {title}", "", "Not available: the phase has not written its records (yet).", ""]
            continue
        images[f"{PLOT_DIR}/{filename}"] = path
        lines += [f"### {title}", "", f"![{title}]({PLOT_DIR}/{filename})", ""]
    markdown = "\n".join(lines) + "\n"
    body = _markdown_to_html(lines)
    for relative, path in images.items():
        encoded = base64.b64encode(path.read_bytes()).decode()
        body = body.replace(f'src="{relative}"', f'src="data:image/png;base64,{encoded}"')
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>" + html.escape(f"Agent Forge: {name}")
            + "</title><style>body{font-family:sans-serif;max-width:1200px;margin:2em auto}"
            "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
            "img{max-width:100%}</style></head><body>\n" + body + "\n</body></html>\n")
    md_path, html_path = run.dir / "report.md", run.dir / "report.html"
    atomic_write_bytes(md_path, markdown.encode())
    atomic_write_bytes(html_path, page.encode())
    return md_path, html_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m forge.report", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="a run directory written by python -m forge.pipeline (runs/<name>)")
    args = parser.parse_args(argv)
    try:
        md_path, html_path = build_report(Path(args.run_dir))
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"report written: {md_path} and {html_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
