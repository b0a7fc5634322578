"""List files: one image per line, `relative/path.jpg LABEL` (or `relative/path.jpg LABEL CAMERA`).

The label is the last space-separated field, so paths may contain spaces.
Re-identification lists carry a camera id after the label (read with
with_camera=True); both are split off the right. Blank lines and a UTF-8
byte-order mark at the start of the file are ignored. Lists read for
inference may leave the labels out, but then every line must be a bare path.
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
    cameras: np.ndarray = None  # int64 camera ids (lists read with_camera), or None
    line_numbers: list = None   # the list-file line of each image (1-based), or None

    @property
    def num_classes(self):
        return 0 if self.classes is None else len(self.classes)

    def __len__(self):
        return len(self.paths)

    def duplicates(self):
        """{path: [line numbers]} of the paths listed more than once.

        Paths are compared after os.path.normpath (so `a/b.jpg` and `a/./b.jpg`
        are one image). Ordered by the line of each path's second listing: the
        first item is the first repeat a reader of the file meets.
        """
        lines = self.line_numbers or list(range(1, len(self.paths) + 1))
        seen = {}
        for path, line_no in zip(self.paths, lines):
            seen.setdefault(os.path.normpath(path), []).append(line_no)
        repeated = [(path, found) for path, found in seen.items() if len(found) > 1]
        repeated.sort(key=lambda item: item[1][1])
        return dict(repeated)


def check_unique_paths(image_list):
    """Raise UserError when an image is listed twice (evaluation counts every row as its own image).

    The message gives how many paths are repeated and the first one with all its lines.
    """
    repeated = image_list.duplicates()
    if not repeated:
        return
    path, lines = next(iter(repeated.items()))
    shown = lines[:MISSING_SHOWN]
    where = ", ".join(map(str, shown[:-1])) + " and " + (f"{shown[-1]}" if len(lines) == len(shown) else
                                                         f"{len(lines) - len(shown) + 1} more")
    extra = sum(len(found) - 1 for found in repeated.values())
    raise UserError(f"{image_list.source}: {len(repeated)} image path(s) listed more than once "
                    f"({extra} extra line(s)); first: {path} on lines {where}. "
                    f"Evaluation needs each image once")


def read_image_list(list_path, data_dir, require_labels=True, check_files=True, with_camera=False):
    """Parse a list file into an ImageList.

    with_camera=True: every line must be `relative/path LABEL CAMERA` (two
    integers split off the right) and ImageList.cameras holds the cameras;
    labels are then required whatever require_labels says.

    Raises UserError (naming the file and line) for a missing or empty list,
    a malformed line, a non-integer label or camera, or, when check_files is
    set, image files that do not exist (all checked before any work starts).
    """
    lines = _read_lines(list_path)
    if with_camera:
        entries = _parse_camera_lines(list_path, lines)
    else:
        entries = _parse_lines(list_path, lines, require_labels)
    if not entries:
        raise UserError(f"{list_path}: the list has no images")
    paths = [os.path.join(data_dir, entry[1]) for entry in entries]
    line_numbers = [entry[0] for entry in entries]
    if check_files:
        _check_files_exist(list_path, data_dir, entries, paths, with_camera)
    if entries[0][2] is None:
        return ImageList(paths, None, None, None, list_path, line_numbers=line_numbers)
    labels = np.array([entry[2] for entry in entries], dtype=np.int64)
    classes, class_ids = np.unique(labels, return_inverse=True)
    cameras = np.array([entry[3] for entry in entries], dtype=np.int64) if with_camera else None
    return ImageList(paths, labels, class_ids.astype(np.int64), classes, list_path, cameras, line_numbers)


def _read_lines(list_path):
    try:
        # utf-8-sig drops a byte-order mark (Windows editors write one), which would
        # otherwise stick to the first path and make its image "not found".
        with open(list_path, encoding="utf-8-sig") as handle:
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


def _parse_camera_lines(list_path, lines):
    """(line number, relative path, label, camera) for each non-blank `path LABEL CAMERA` line."""
    entries = []
    for line_no, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        where = f"{list_path}, line {line_no}"
        parts = text.rsplit(maxsplit=2)
        if len(parts) < 3:
            raise UserError(f"{where}: expected 'relative/path LABEL CAMERA' (--with_camera), got {text!r}")
        rel_path, label_text, camera_text = parts
        values = []
        for name, value in (("label", label_text), ("camera", camera_text)):
            try:
                values.append(int(value))
            except ValueError:
                raise UserError(f"{where}: {name} {value!r} is not an integer "
                                f"(expected 'relative/path LABEL CAMERA')") from None
        entries.append((line_no, rel_path, values[0], values[1]))
    return entries


def _check_labels_consistent(list_path, entries):
    """Either every line has a label or none has."""
    labelled = [entry for entry in entries if entry[2] is not None]
    if labelled and len(labelled) != len(entries):
        first_bare = next(entry for entry in entries if entry[2] is None)
        raise UserError(f"{list_path}, line {first_bare[0]}: no label, but other lines have labels "
                        f"(all lines need 'relative/path LABEL', or none)")


def _check_files_exist(list_path, data_dir, entries, paths, with_camera=False):
    missing = [(entry[0], path) for entry, path in zip(entries, paths) if not os.path.isfile(path)]
    if not missing:
        return
    shown = ", ".join(f"line {line_no}: {path}" for line_no, path in missing[:MISSING_SHOWN])
    more = f" and {len(missing) - MISSING_SHOWN} more" if len(missing) > MISSING_SHOWN else ""
    raise UserError(f"{list_path}: {len(missing)} of {len(paths)} images not found under "
                    f"--data_dir {data_dir!r} ({shown}{more}){_camera_hint(missing, with_camera)}")


def _camera_hint(missing, with_camera):
    """A hint when the 'missing' paths end in ' <integer>': a camera column read as part of the path."""
    first = missing[0][1].rsplit(maxsplit=1)
    if with_camera or len(first) != 2 or not first[1].lstrip("-").isdigit():
        return ""
    return "; the lines look like 'path LABEL CAMERA': pass --with_camera True"
