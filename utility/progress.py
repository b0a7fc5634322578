"""Progress a person can follow: a one-line bar on a terminal, a few plain lines in a log file."""
import sys
import time


def format_duration(seconds):
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """Counts items done out of `total`, with rate and ETA.

    On a terminal the line is redrawn in place; otherwise a line is printed every 10 %.
    """

    def __init__(self, total, label, stream=None):
        self.total = max(1, total)
        self.label = label
        self.stream = stream or sys.stdout
        self.done = 0
        self.start = time.time()
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._next_tenth = 1

    def update(self, count):
        self.done += count
        if self.tty:
            self.stream.write("\r" + self._line())
            self.stream.flush()
        elif self.done * 10 >= self._next_tenth * self.total:
            self._next_tenth = self.done * 10 // self.total + 1
            print(self._line(), file=self.stream, flush=True)

    def close(self):
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def _line(self):
        elapsed = max(time.time() - self.start, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else 0
        width = 30
        filled = min(width, width * self.done // self.total)
        return (f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                f"{rate:.1f} img/s, eta {format_duration(eta)}")
