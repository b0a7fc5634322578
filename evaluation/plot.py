"""Training curves from train.py's log.jsonl: losses, learning rate and test Recall@1 against iterations.

    python -m evaluation.plot output/log.jsonl curves.png

No Paddle import; matplotlib draws off-screen (Agg), so it works without a display.
"""
import json
import sys

from utility.files import write_atomically

LOSS_SERIES = ("loss_metric", "loss_cls")
DAMAGED_LINES_NAMED = 5  # how many damaged lines' numbers a note names


def read_records(log_jsonl_path, report=print):
    """The records of a log.jsonl, in order. A damaged line (not a JSON object: a run killed mid-write, an
    edit) is skipped, and `report` gets one line naming the first few such lines: a log never stops its reader."""
    records, damaged = [], []
    with open(log_jsonl_path, errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict):
                records.append(record)
            else:
                damaged.append(str(number))
    if damaged:
        report(f"note: skipped {len(damaged)} damaged line(s) of {log_jsonl_path}: line "
               f"{', '.join(damaged[:DAMAGED_LINES_NAMED])}{' ...' if len(damaged) > DAMAGED_LINES_NAMED else ''}")
    return records


def read_series(log_jsonl_path, report=print):
    """{name: (iterations, values)} for loss_metric, loss_cls, lr (progress records) and test_recall
    (evaluation records). A series whose values are all missing or null is left out. When a resumed run
    appended to the log, later records of the same iteration replace earlier ones. Damaged lines and
    values that are not numbers are skipped (read_records)."""
    series = {}
    for record in read_records(log_jsonl_path, report):
        if not _is_number(record.get("iter")):
            continue
        names = ("test_recall",) if "test_recall" in record else (*LOSS_SERIES, "lr")
        for name in names:
            value = record.get(name)
            if _is_number(value):
                series.setdefault(name, {})[int(record["iter"])] = float(value)
    return {name: (sorted(points), [points[i] for i in sorted(points)]) for name, points in series.items()}


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def plot_training(log_jsonl_path, out_png):
    """Draw the curves of one training log to out_png; return {series name: number of points}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = read_series(log_jsonl_path)
    # softmax alone logs a metric loss of 0 at every step: there is no metric loss to draw
    trained = [name for name in LOSS_SERIES if name in series and any(series[name][1])]
    panels = [("loss", trained),
              ("learning rate", ["lr"] if "lr" in series else []),
              ("test Recall@1", ["test_recall"] if "test_recall" in series else [])]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 8), sharex=True)
    for axis, (title, names) in zip(axes, panels):
        for name in names:
            iterations, values = series[name]
            axis.plot(iterations, values, marker="o" if name == "test_recall" else None,
                      markersize=4, label=name)
        axis.set_ylabel(title)
        axis.grid(alpha=0.3)
        if names:
            axis.legend(loc="best")
        else:
            axis.text(0.5, 0.5, "no data", transform=axis.transAxes, ha="center", va="center")
    axes[-1].set_xlabel("iteration")
    fig.suptitle(str(log_jsonl_path), fontsize=9)
    fig.tight_layout()
    write_atomically(out_png, lambda f: fig.savefig(f, format="png", dpi=90))
    plt.close(fig)
    return {name: len(series[name][0]) for names in (p[1] for p in panels) for name in names}


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m evaluation.plot LOG_JSONL OUT_PNG")
    print(plot_training(sys.argv[1], sys.argv[2]))
