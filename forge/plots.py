"""The one way figures are drawn and written: matplotlib (headless Agg backend), saved as PNG atomically."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

from forge.artifacts import atomic_write_bytes


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed); imported only when a figure is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path) -> Path:
    """Write ``fig`` to ``path`` as a PNG (atomically) and close it."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    pyplot().close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def grouped_bars(ax, groups: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]], *, ylabel: str,
                 title: str, intervals: Sequence[Sequence[Sequence[float] | None]] | None = None) -> None:
    """Shares (0..1) of several series side by side in each group, each bar labelled with its value; a value that
    was not measured (None) gets no bar and the label n/a. ``intervals`` (per series, per group: ``[low, high]`` or
    None) draws each value's interval as an error bar. The caller adds any lines, then the legend."""
    width = 0.8 / max(len(series), 1)
    for index, (label, values) in enumerate(series):
        positions = [i + (index - (len(series) - 1) / 2) * width for i in range(len(groups))]
        heights = [0.0 if v is None else v for v in values]
        texts = ["n/a" if v is None else f"{v:.2f}" for v in values]
        bars = ax.bar(positions, heights, width, label=label)
        if intervals is None:
            ax.bar_label(bars, labels=texts, fontsize=8)
            continue
        spans = [span if span and v is not None else None for v, span in zip(values, intervals[index])]
        ax.errorbar(positions, heights, fmt="none", ecolor="0.2", elinewidth=1, capsize=3,
                    yerr=[[h - span[0] if span else 0.0 for h, span in zip(heights, spans)],
                          [span[1] - h if span else 0.0 for h, span in zip(heights, spans)]])
        for x, h, span, text in zip(positions, heights, spans, texts):  # above the interval, not across it
            ax.annotate(text, (x, span[1] if span else h), xytext=(0, 3), textcoords="offset points", ha="center",
                        va="bottom", fontsize=8)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
