"""A console a person can read: the pipeline's own lines on the screen, everything else in a log file.

``readable_console(log_path)`` sends every line written to stdout and stderr (Ray Tune's experiment
boxes and TensorBoard hints, workers' output, progress bars, library warnings, INFO logging) to
``log_path``, and shows on the screen only the pipeline's ``[forge]`` lines, ``error:`` lines, and
WARNING/ERROR log records, each distinct warning once. ``python -m forge.pipeline --verbose`` skips
this and shows everything.
"""
from __future__ import annotations

import contextlib
import io
import logging
import sys
from pathlib import Path
from typing import Iterator, TextIO

SCREEN_PREFIXES = ("[forge]", "error:", "WARNING ", "ERROR ", "CRITICAL ", "Traceback")


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
        self.screen.write(line + "\n")
        self.screen.flush()

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
