"""In-shop Clothes Retrieval lists: train.txt (3,997 items), query.txt and gallery.txt (3,985 other items).

From the unpacked In-shop folder of DeepFashion: Eval/list_eval_partition.txt (or the file at the
top of the folder) and img/ (Img/img.zip unpacked; Img/img/ is found too). The partition file has
a line with the number of images, a header line, then `image_name item_id evaluation_status` lines,
e.g. `img/WOMEN/Dresses/id_00000002/02_1_front.jpg id_00000002 train`, the status train, query or
gallery. Every item (a garment, id_NNNNNNNN) is a class. Labels: see data/lists.py; query and
gallery share theirs.

    python -m data.inshop --dataset_dir /path/to/In-shop --out_dir data/inshop
"""
from pathlib import Path

from data.lists import check_images, number_classes, parse_args, read_rows, write_lists
from utility.errors import UserError, run_main

DATASET = "In-shop Clothes Retrieval"
DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "inshop"
PARTITION = "list_eval_partition.txt"
PARTITION_PLACES = ("Eval", ".")
IMAGE_PLACES = (".", "Img")  # the folder holding img/, relative to the data-set folder
COLUMNS = ("image_name", "item_id", "evaluation_status")
SPLITS = ("train", "query", "gallery")


def find(root, places, name):
    """root/place/name for the first place where it exists, else None."""
    return next((root / place / name for place in places if (root / place / name).exists()), None)


def read_partition(path):
    """{split: [(image name, item id)]} of list_eval_partition.txt, in file order."""
    rows = read_rows(path, COLUMNS, header_lines=2, dataset=DATASET)
    splits = {split: [] for split in SPLITS}
    for line_no, (image, item, status) in rows:
        if status not in splits:
            raise UserError(f"{path}, line {line_no}: evaluation_status {status!r} is not one of {', '.join(SPLITS)}")
        splits[status].append((image, item))
    announced = path.read_text(encoding="utf-8-sig").split("\n", 1)[0].strip()
    if announced.isdigit() and int(announced) != len(rows):
        raise UserError(f"{path}: its first line announces {announced} images but it lists {len(rows)} "
                        f"(a truncated or edited file?)")
    for split, entries in splits.items():
        if not entries:
            raise UserError(f"{path} lists no {split} image")
    return splits


def prepare(root, out_dir):
    """Write train.txt, query.txt and gallery.txt for the data set in root; return {split: list path}."""
    root = Path(root)
    partition = find(root, PARTITION_PLACES, PARTITION)
    if partition is None:
        raise UserError(f"{root / 'Eval' / PARTITION} not found: expected the unpacked {DATASET} folder")
    splits = read_partition(partition)
    image_dir = find(root, IMAGE_PLACES, "img")
    prefix = "" if image_dir is None or image_dir.parent == root else f"{image_dir.parent.relative_to(root)}/"
    entries = [(prefix + image, item) for split in SPLITS for image, item in splits[split]]
    check_images(root, [image for image, _ in entries], partition.name)
    label_of = number_classes([item for _, item in splits["train"]],
                              [item for split in ("query", "gallery") for _, item in splits[split]])
    written = write_lists(out_dir, {split: [(prefix + image, label_of[item]) for image, item in splits[split]]
                                    for split in SPLITS})
    print(f"evaluate with --data_dir {root} --query_list {written['query']} --gallery_list {written['gallery']}")
    return written


def main(argv=None):
    args = parse_args(argv, __doc__.split("\n")[0], DATASET, DEFAULT_OUT_DIR,
                      "train.txt, query.txt and gallery.txt")
    return prepare(args.dataset_dir, args.out_dir)


if __name__ == "__main__":
    run_main(main)
