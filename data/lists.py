"""What the benchmark preparers share (sop.py, cars196.py, inshop.py, msmt17.py).

Reading an official annotation table with line-numbered errors, checking that the listed
images are there, numbering the classes, and writing the lists.

Labels: the train list's classes are numbered 0..C-1 in the order of their official ids; the
evaluation lists' classes continue from C. A label therefore names one class across all the
lists of a data set, and the train labels are the softmax branch's class ids as they stand.
"""
import argparse
import os
from pathlib import Path

from utility.errors import UserError

MISSING_SHOWN = 3  # how many missing images an error message names


def read_rows(path, columns, header_lines, dataset):
    """[(line number, fields)] of a whitespace-separated table, skipping its header lines and blank lines.

    A missing file, or a line without exactly `columns` fields, is a UserError naming the file (and line).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found: expected the unpacked {dataset} folder")
    rows = []
    with open(path, encoding="utf-8-sig") as handle:
        for line_no, line in enumerate(handle, start=1):
            if line_no <= header_lines or not line.strip():
                continue
            fields = line.split()
            if len(fields) != len(columns):
                raise UserError(f"{path}, line {line_no}: expected {len(columns)} fields "
                                f"({' '.join(columns)}), got {line.strip()!r}")
            rows.append((line_no, fields))
    if not rows:
        raise UserError(f"{path} lists no images")
    return rows


def to_int(path, line_no, column, text):
    """int(text), or a UserError naming the file, line and column."""
    try:
        return int(text)
    except ValueError:
        raise UserError(f"{path}, line {line_no}: {column} {text!r} is not an integer") from None


def check_images(root, paths, source):
    """A UserError when any of the listed images (relative to root) is missing, naming the first few."""
    missing = [path for path in paths if not os.path.isfile(os.path.join(root, path))]
    if missing:
        shown = ", ".join(missing[:MISSING_SHOWN])
        raise UserError(f"{len(missing)} of {len(paths)} images listed in {source} are missing under {root} "
                        f"(e.g. {shown}): is it the unpacked folder, and is the archive fully extracted?")


def number_classes(train_classes, evaluation_classes):
    """{class: label}: the train classes 0..C-1 in sorted order, then the other evaluation classes from C."""
    train = sorted(set(train_classes))
    order = train + sorted(set(evaluation_classes) - set(train))
    return {name: label for label, name in enumerate(order)}


def write_list(path, rows):
    """Write one line per row, its fields joined by spaces; the file appears only once complete."""
    partial = os.path.join(os.path.dirname(path), f".partial-{os.path.basename(path)}")
    with open(partial, "w", encoding="utf-8") as handle:
        handle.writelines(" ".join(str(field) for field in row) + "\n" for row in rows)
    os.replace(partial, path)


def write_lists(out_dir, lists):
    """Write {name}.txt for every (name, rows) of `lists` into out_dir, print one line each; return {name: path}.

    Rows are (path, label) or, for re-identification, (path, person, camera).
    """
    os.makedirs(out_dir, exist_ok=True)
    written = {}
    for name, rows in lists.items():
        written[name] = os.path.join(out_dir, f"{name}.txt")
        write_list(written[name], rows)
        labels = {row[1] for row in rows}
        cameras = f", {len({row[2] for row in rows})} cameras" if len(rows[0]) == 3 else ""
        print(f"{name}: {len(rows)} images, {len(labels)} classes (labels {min(labels)}-{max(labels)})"
              f"{cameras} -> {written[name]}")
    return written


def write_class_split(root, out_dir, splits):
    """train.txt and val.txt from {"train": [(path, class)], "val": [...]}, the classes numbered by
    number_classes; prints how to train on them and returns {name: list path}."""
    label_of = number_classes([name for _, name in splits["train"]], [name for _, name in splits["val"]])
    written = write_lists(out_dir, {split: [(path, label_of[name]) for path, name in rows]
                                    for split, rows in splits.items()})
    print(f"train with --data_dir {root} --train_list {written['train']} --val_list {written['val']}")
    return written


def parse_args(argv, description, dataset, default_out_dir, outputs):
    """The preparers' command line: --dataset_dir and --out_dir."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--dataset_dir", required=True, help=f"the unpacked {dataset} folder")
    parser.add_argument("--out_dir", default=str(default_out_dir), help=f"where {outputs} go")
    return parser.parse_args(argv)
