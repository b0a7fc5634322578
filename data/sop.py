"""Stanford Online Products lists: train.txt (11,318 products) and val.txt (11,316 other products).

From the unpacked Stanford_Online_Products folder: Ebay_train.txt and Ebay_test.txt (a header
line, then `image_id class_id super_class_id path` lines, e.g. `1 1 1 bicycle_final/111085122871_0.JPG`)
and the twelve `<category>_final/` image folders. Every product (class_id) is a class; the official
split is zero-shot (no product in both files). Labels: see data/lists.py.

    python -m data.sop --dataset_dir /path/to/Stanford_Online_Products --out_dir data/sop
"""
from pathlib import Path

from data.lists import check_images, parse_args, read_rows, to_int, write_class_split
from utility.errors import run_main

DATASET = "Stanford_Online_Products"
DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "sop"
COLUMNS = ("image_id", "class_id", "super_class_id", "path")
SPLIT_FILES = (("train", "Ebay_train.txt"), ("val", "Ebay_test.txt"))


def read_split(path):
    """[(image path, class_id)] of one Ebay_*.txt file, in file order."""
    return [(fields[3], to_int(path, line_no, "class_id", fields[1]))
            for line_no, fields in read_rows(path, COLUMNS, header_lines=1, dataset=DATASET)]


def prepare(root, out_dir):
    """Write train.txt and val.txt for the data set in root; return {split: list path}."""
    root = Path(root)
    splits = {name: read_split(root / file) for name, file in SPLIT_FILES}
    for name, file in SPLIT_FILES:
        check_images(root, [path for path, _ in splits[name]], file)
    return write_class_split(root, out_dir, splits)


def main(argv=None):
    args = parse_args(argv, __doc__.split("\n")[0], DATASET, DEFAULT_OUT_DIR, "train.txt and val.txt")
    return prepare(args.dataset_dir, args.out_dir)


if __name__ == "__main__":
    run_main(main)
