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
