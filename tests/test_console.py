"""The readable console: the pipeline's lines on screen, everything in the log, a repeated warning once."""
import io
import logging
import sys

from forge.console import FilteredStream, readable_console


def test_filtered_stream_keeps_everything_in_the_log_and_little_on_screen():
    screen, log = io.StringIO(), io.StringIO()
    stream = FilteredStream(screen, log)
    stream.write("[forge] cognate: starting\nView detailed results here: /x\nTo visualize your results with ")
    stream.write("TensorBoard, run: `tensorboard --logdir /y`\nWARNING ray.tune: same\nWARNING ray.tune: same\n")
    stream.write("Loading weights: 100%\r\nerror: bad\n[forge] cognate: complete")
    assert screen.getvalue() == "[forge] cognate: starting\nWARNING ray.tune: same\nerror: bad\n"
    assert log.getvalue().count("\n") == 7 and "TensorBoard" in log.getvalue()
    stream.write("\n")
    assert screen.getvalue().endswith("[forge] cognate: complete\n")


def test_readable_console_routes_prints_and_logging(tmp_path, capsys):
    handler = logging.StreamHandler(sys.stderr)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with readable_console(tmp_path / "console.log"):
            print("Number of trials 10")
            print("[forge] bitnet: complete in 3 s")
            logging.getLogger("forge.test").warning("a warning")
    finally:
        root.removeHandler(handler)
    shown = capsys.readouterr()
    assert shown.out == "[forge] bitnet: complete in 3 s\n" and "Number of trials" not in shown.err
    text = (tmp_path / "console.log").read_text()
    assert "Number of trials 10" in text and "a warning" in text
    assert handler.stream is sys.stderr  # restored


class _Terminal(io.StringIO):
    """A terminal's stderr as tqdm sees it (a TTY), kept in memory."""

    def isatty(self):
        return True


def test_progress_without_a_terminal_prints_a_forge_line_per_interval(tmp_path, capsys, monkeypatch):
    from forge.console import Progress

    monkeypatch.setattr(sys, "__stderr__", io.StringIO())  # not a TTY: no bar
    with readable_console(tmp_path / "console.log"):
        quiet = Progress("evomerge: generations", 5, "generation", every_s=3600)
        for _ in quiet.steps(range(5)):
            pass
        steady = Progress("cognate: training a, b", 40, "step", done=10, every_s=0.0)
        steady.set(25)
        steady.set(20)  # a rollback does not move it back
        steady.close()
    shown = capsys.readouterr().out.splitlines()
    assert len(shown) == 1 and shown[0].startswith("[forge] cognate: training a, b: 25/40 steps, ")
    log = (tmp_path / "console.log").read_text()
    assert log.splitlines() == shown and "\r" not in log


def test_progress_bar_draws_on_the_terminal_only_and_clears_for_screen_lines(tmp_path, capsys, monkeypatch):
    from forge.console import Progress

    terminal = _Terminal()
    monkeypatch.setattr(sys, "__stderr__", terminal)
    with readable_console(tmp_path / "console.log"):
        progress = Progress("quietstar: Step 2 RL on thoughts", 10, "episode")
        logged = []
        log = progress.following(lambda metrics, step=None: logged.append(metrics), lambda m, _: m.get("rl/episode"))
        for episode in range(1, 4):
            log({"rl/episode": episode, "rl/loss": 0.5})
        drawn_before = len(terminal.getvalue())
        print("[forge] quietstar: after Step 2")  # the bar is cleared for it, then drawn again
        assert len(terminal.getvalue()) > drawn_before
        progress.close()
    assert len(logged) == 3 and progress.n == 3
    drawn = terminal.getvalue()
    assert "quietstar: Step 2 RL on thoughts" in drawn and "3/10" in drawn and "\r" in drawn
    # No bar in the log file or among the pipeline's lines; the screen line is written whole.
    assert (tmp_path / "console.log").read_text() == "[forge] quietstar: after Step 2\n"
    assert capsys.readouterr().out == "[forge] quietstar: after Step 2\n"
