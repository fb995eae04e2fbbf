"""A console a person can read: the pipeline's own lines on the screen, everything else in a log file.

``readable_console(log_path)`` sends every line written to stdout and stderr (Ray Tune's experiment
boxes and TensorBoard hints, workers' output, progress bars, library warnings, INFO logging) to
``log_path``, and shows on the screen only the pipeline's ``[forge]`` lines, ``error:`` lines, and
WARNING/ERROR log records, each distinct warning once. ``python -m forge.pipeline --verbose`` skips
this and shows everything.

``Progress`` follows one long loop of the driver: a tqdm bar on the terminal when stderr is one (drawn on the
real stderr, past the filter, so console.log never gets its carriage-return redraws), else a ``[forge]``
progress line at most every ``PROGRESS_EVERY_S`` seconds (a log file or CI gets a few readable lines). Loops
inside Ray actors are followed from the driver (their metrics), because an actor's output reaches the driver
only as prefixed log lines, where a bar's redraws would become hundreds of lines.
"""
from __future__ import annotations

import contextlib
import io
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TextIO

SCREEN_PREFIXES = ("[forge]", "error:", "WARNING ", "ERROR ", "CRITICAL ", "Traceback")
PROGRESS_EVERY_S = 60.0
"""Without a terminal: the least time between two progress lines of one loop."""
_open_bars: list[Any] = []  # the terminal's tqdm bars, cleared while a screen line is written


def _write_screen(screen: TextIO, line: str) -> None:
    for bar in _open_bars:
        bar.clear()
    screen.write(line + "\n")
    screen.flush()
    for bar in _open_bars:
        bar.refresh()


class FilteredStream(io.TextIOBase):
    """Writes whole lines to ``log``; the ones a person needs also to ``screen`` (repeated warnings once)."""

    def __init__(self, screen: TextIO, log: TextIO):
        self.screen, self.log = screen, log
        self.pending = ""
        self.shown_warnings: set[str] = set()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self._line(line)
        return len(text)

    def _line(self, line: str) -> None:
        self.log.write(line + "\n")
        self.log.flush()
        if not line.startswith(SCREEN_PREFIXES):
            return
        if line.startswith("WARNING "):
            if line in self.shown_warnings:
                return
            self.shown_warnings.add(line)
        _write_screen(self.screen, line)

    def flush(self) -> None:
        self.log.flush()
        self.screen.flush()

    def isatty(self) -> bool:  # progress bars: draw as for a file (one line per update, into the log)
        return False

    def fileno(self) -> int:
        raise io.UnsupportedOperation("the filtered console has no file descriptor")


@contextlib.contextmanager
def readable_console(log_path: Path) -> Iterator[Path]:
    """Within the block, stdout/stderr and logging go through ``FilteredStream`` (see the module doc)."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    # Left open: handlers that libraries (Ray) create inside the block keep writing here until the process ends.
    log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115
    out = FilteredStream(sys.stdout, log)
    err = FilteredStream(sys.stderr, log)
    previous = [(handler, getattr(handler, "stream", None)) for handler in root.handlers]
    for handler, stream in previous:
        if stream in (sys.stdout, sys.stderr):
            handler.setStream(err)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield log_path
    finally:
        for stream in (out, err):
            if stream.pending:
                stream._line(stream.pending)
                stream.pending = ""
        for handler, stream in previous:
            if stream in (sys.stdout, sys.stderr):
                handler.setStream(stream)


class Progress:
    """Progress of one long loop (``total`` units; ``done`` already done on a resume); see the module doc.

    ``update(n)`` advances, ``set(n)`` moves to ``n``; ``close()`` (or the ``with`` block's end) removes the bar.
    """

    def __init__(self, desc: str, total: int, unit: str, done: int = 0, every_s: float = PROGRESS_EVERY_S):
        self.desc, self.total, self.unit, self.n, self.every_s = desc, total, unit, done, every_s
        self.started = self.last_line = time.monotonic()
        self.start_n = done
        terminal = sys.__stderr__
        self.bar = None
        if terminal is not None and terminal.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, desc=desc, unit=unit, file=terminal, leave=False,
                            dynamic_ncols=True, mininterval=0.5)
            _open_bars.append(self.bar)

    def set(self, n: int) -> None:
        if n > self.n:
            self.update(n - self.n)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self.last_line >= self.every_s:
            self.last_line = now
            print(f"[forge] {self.desc}: {self.line(now)}", flush=True)

    def line(self, now: float) -> str:
        """``n/total unit, elapsed, about X s left`` (the rate of this run, not counting resumed work)."""
        elapsed = now - self.started
        rate = (self.n - self.start_n) / elapsed if elapsed > 0 else 0.0
        left = f", about {(self.total - self.n) / rate:.0f} s left" if rate > 0 and self.total >= self.n else ""
        return f"{self.n}/{self.total} {self.unit}s, {elapsed:.0f} s{left}"

    def steps(self, iterable: Iterable[Any]) -> Iterator[Any]:
        """The items of ``iterable``, one unit each (counted when the loop asks for the next); closes at the end."""
        try:
            for item in iterable:
                yield item
                self.update()
        finally:
            self.close()

    def following(self, log: Callable[..., None], position: Callable[[dict[str, Any], int | None], int | None]
                  ) -> Callable[..., None]:
        """``log`` (a tracker's ``log(metrics, step=None)``) that also moves this to ``position(metrics, step)``
        (None: no move), for loops that run inside a library function and report only through ``log``."""
        def logged(metrics: dict[str, Any], step: int | None = None) -> None:
            log(metrics, step=step)
            n = position(metrics, step)
            if n is not None:
                self.set(n)
        return logged

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            _open_bars.remove(self.bar)
            self.bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
