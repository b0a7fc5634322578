"""Cars196 lists: train.txt (car models 1-98) and val.txt (models 99-196), the metric-learning split.

From a folder holding cars_annos.mat and car_ims/ (the official car_ims.tgz unpacked beside it).
The .mat's `annotations` struct array has, per image, relative_im_path (`car_ims/000001.jpg`),
the bounding box, class (1-196) and test; the metric-learning benchmarks split by class, so the
official classification flag `test` is not used. Labels: see data/lists.py.

    python -m data.cars196 --dataset_dir /path/to/cars196 --out_dir data/cars196
"""
from pathlib import Path

import numpy as np
from scipy.io import loadmat
from scipy.io.matlab import MatReadError

from data.lists import check_images, parse_args, write_class_split
from utility.errors import UserError, run_main

DATASET = "Cars196 (cars_annos.mat and car_ims/)"
DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "cars196"
ANNOTATIONS = "cars_annos.mat"
NUM_CLASSES = 196
LAST_TRAIN_CLASS = 98


def read_annotations(path):
    """[(relative image path, class)] of cars_annos.mat, in its order."""
    if not path.is_file():
        raise UserError(f"{path} not found: expected a folder holding {ANNOTATIONS} and car_ims/")
    try:
        annotations = loadmat(path, squeeze_me=True)["annotations"]
    except (MatReadError, ValueError, TypeError, KeyError) as err:
        raise UserError(f"{path}: not a Cars196 annotation file ({err.__class__.__name__}: {err})") from None
    annotations = np.atleast_1d(annotations)
    missing = {"relative_im_path", "class"} - set(annotations.dtype.names or ())
    if missing:
        raise UserError(f"{path}: the annotations have no field {', '.join(sorted(missing))}")
    entries = []
    for number, (image, label) in enumerate(zip(annotations["relative_im_path"], annotations["class"]), start=1):
        if not isinstance(image, str) or not np.issubdtype(np.asarray(label).dtype, np.integer) \
                or not 1 <= int(label) <= NUM_CLASSES:
            raise UserError(f"{path}, annotation {number}: expected an image path and a class in 1-{NUM_CLASSES}, "
                            f"got {image!r} and {label!r}")
        entries.append((image, int(label)))
    return entries


def prepare(root, out_dir):
    """Write train.txt and val.txt for the data set in root; return {split: list path}."""
    root = Path(root)
    entries = read_annotations(root / ANNOTATIONS)
    check_images(root, [path for path, _ in entries], ANNOTATIONS)
    splits = {"train": [entry for entry in entries if entry[1] <= LAST_TRAIN_CLASS],
              "val": [entry for entry in entries if entry[1] > LAST_TRAIN_CLASS]}
    for name, rows in splits.items():
        if not rows:
            raise UserError(f"{root / ANNOTATIONS} has no image of the {name} classes")
    return write_class_split(root, out_dir, splits)


def main(argv=None):
    args = parse_args(argv, __doc__.split("\n")[0], DATASET, DEFAULT_OUT_DIR, "train.txt and val.txt")
    return prepare(args.dataset_dir, args.out_dir)


if __name__ == "__main__":
    run_main(main)
