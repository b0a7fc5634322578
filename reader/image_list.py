"""List files: one image per line, `relative/path.jpg LABEL`.

The label is the last space-separated field, so paths may contain spaces.
Blank lines are ignored. Lists read for inference may leave the labels out,
but then every line must be a bare path.
"""
import os
from dataclasses import dataclass

import numpy as np

from utility.errors import UserError

MISSING_SHOWN = 5  # how many missing image paths an error message names


@dataclass
class ImageList:
    """The images of one list file, in list order, with their labels."""

    paths: list            # image paths joined to data_dir, list order
    labels: np.ndarray     # int64 labels as written in the list, or None when unlabelled
    class_ids: np.ndarray  # int64 ids 0..C-1 in sorted label order, or None
    classes: np.ndarray    # int64 sorted unique labels; classes[class_ids] == labels, or None
    source: str            # the list file path

    @property
    def num_classes(self):
        return 0 if self.classes is None else len(self.classes)

    def __len__(self):
        return len(self.paths)


def read_image_list(list_path, data_dir, require_labels=True, check_files=True):
    """Parse a list file into an ImageList.

    Raises UserError (naming the file and line) for a missing or empty list,
    a malformed line, a non-integer label, or, when check_files is set, image
    files that do not exist (all checked before any work starts).
    """
    entries = _parse_lines(list_path, _read_lines(list_path), require_labels)
    if not entries:
        raise UserError(f"{list_path}: the list has no images")
    paths = [os.path.join(data_dir, rel_path) for _, rel_path, _ in entries]
    if check_files:
        _check_files_exist(list_path, data_dir, entries, paths)
    if entries[0][2] is None:
        return ImageList(paths, None, None, None, list_path)
    labels = np.array([label for _, _, label in entries], dtype=np.int64)
    classes, class_ids = np.unique(labels, return_inverse=True)
    return ImageList(paths, labels, class_ids.astype(np.int64), classes, list_path)


def _read_lines(list_path):
    try:
        with open(list_path, encoding="utf-8") as handle:
            return handle.read().splitlines()
    except FileNotFoundError:
        raise UserError(f"list file not found: {list_path}") from None
    except IsADirectoryError:
        raise UserError(f"list file is a directory: {list_path}") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{list_path}: not a UTF-8 text file ({err.reason})") from None
    except OSError as err:
        raise UserError(f"cannot read list file {list_path}: {err.strerror}") from None


def _parse_lines(list_path, lines, require_labels):
    """(line number, relative path, label or None) for each non-blank line."""
    entries = []
    for line_no, line in enumerate(lines, start=1):
        text = line.strip()
        if text:
            entries.append(_parse_line(list_path, line_no, text, require_labels))
    _check_labels_consistent(list_path, entries)
    return entries


def _parse_line(list_path, line_no, text, require_labels):
    where = f"{list_path}, line {line_no}"
    parts = text.rsplit(maxsplit=1)
    if len(parts) == 1:
        if require_labels:
            raise UserError(f"{where}: expected 'relative/path LABEL', got {text!r}")
        return line_no, text, None
    rel_path, label_text = parts
    try:
        label = int(label_text)
    except ValueError:
        if require_labels:
            raise UserError(f"{where}: label {label_text!r} is not an integer") from None
        return line_no, text, None  # an unlabelled path that contains a space
    return line_no, rel_path, label


def _check_labels_consistent(list_path, entries):
    """Either every line has a label or none has."""
    labelled = [entry for entry in entries if entry[2] is not None]
    if labelled and len(labelled) != len(entries):
        first_bare = next(entry for entry in entries if entry[2] is None)
        raise UserError(f"{list_path}, line {first_bare[0]}: no label, but other lines have labels "
                        f"(all lines need 'relative/path LABEL', or none)")


def _check_files_exist(list_path, data_dir, entries, paths):
    missing = [(entry[0], path) for entry, path in zip(entries, paths) if not os.path.isfile(path)]
    if not missing:
        return
    shown = ", ".join(f"line {line_no}: {path}" for line_no, path in missing[:MISSING_SHOWN])
    more = f" and {len(missing) - MISSING_SHOWN} more" if len(missing) > MISSING_SHOWN else ""
    raise UserError(f"{list_path}: {len(missing)} of {len(paths)} images not found under "
                    f"--data_dir {data_dir!r} ({shown}{more})")
