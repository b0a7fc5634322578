"""utility/progress.py: durations, and progress lines in a log file."""
import io

from utility.progress import Progress, format_duration


def test_format_duration():
    assert format_duration(0) == "0:00:00"
    assert format_duration(3725.9) == "1:02:05"
    assert format_duration(-5) == "0:00:00"


def test_a_log_file_gets_a_line_every_tenth():
    stream = io.StringIO()
    progress = Progress(100, "embedding", stream=stream)
    for _ in range(20):
        progress.update(5)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10
    assert lines[0].startswith("embedding [###...........................] 10/100 ")
    assert lines[-1].startswith("embedding [##############################] 100/100 ")
    assert "\r" not in stream.getvalue()


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_line_is_redrawn_in_place():
    stream = Terminal()
    progress = Progress(4, "embedding", stream=stream)
    progress.update(2)
    progress.update(2)
    progress.close()
    assert stream.getvalue().count("\r") == 2 and stream.getvalue().endswith("\n")
    assert "4/4" in stream.getvalue()
