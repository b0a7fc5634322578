"""MSMT17 re-identification lists: train.txt, query.txt, gallery.txt with cameras.

From the unpacked MSMT17_V1 folder (train/, test/) or MSMT17_V2 folder (mask_train_v2/,
mask_test_v2/), both with list_train.txt, list_val.txt, list_query.txt and list_gallery.txt:
`0000/0000_000_01_0303morning_0015_0.jpg 0` lines, the path relative to the train (train, val)
or test (query, gallery) folder and the person id. The file name starts with the person, the
image number and the camera (01-15), then the day and time of day of the recording.

train.txt holds list_train and list_val (the official validation images come from the training
folder; 1,041 identities in all); query.txt and gallery.txt the 3,060 test identities. Each line is `folder/file.jpg PERSON CAMERA` relative to
the MSMT17 folder (see data/reid_lists.py); persons are numbered as in data/lists.py, so a
test person never shares a label with a training person (the official lists number both from 0).

    python -m data.msmt17 --dataset_dir /path/to/MSMT17_V1 --out_dir data/msmt17
"""
import re
from pathlib import Path

from data.lists import check_images, number_classes, parse_args, read_rows, to_int, write_lists
from data.reid_lists import NamingScheme, parse_name
from utility.errors import UserError, run_main

MSMT17 = NamingScheme("MSMT17", re.compile(r"(\d{4})_\d{3}_(\d{2})_\w+\.jpg"), "0000_000_01_0303morning_0015_0.jpg", 15)
DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "msmt17"
COLUMNS = ("path", "person")
IMAGE_FOLDERS = {"train": ("train", "mask_train_v2"), "test": ("test", "mask_test_v2")}  # V1, V2
SPLITS = (("train", "train", ("list_train.txt", "list_val.txt")),  # list name, image folder, official lists
          ("query", "test", ("list_query.txt",)),
          ("gallery", "test", ("list_gallery.txt",)))


def image_folder(root, part):
    """The name of root's train or test image folder (V1 or V2, any letter case)."""
    names = {name.lower(): name for name in (path.name for path in root.iterdir() if path.is_dir())}
    found = next((names[name] for name in IMAGE_FOLDERS[part] if name in names), None)
    if found is None:
        raise UserError(f"{root} has no {' or '.join(IMAGE_FOLDERS[part])} folder: expected the unpacked "
                        f"MSMT17_V1 or MSMT17_V2 folder")
    return found


def read_list(path, folder):
    """[(path relative to the MSMT17 folder, person, camera)] of one official list."""
    entries = []
    for line_no, (image, person) in read_rows(path, COLUMNS, header_lines=0, dataset="MSMT17"):
        parsed = parse_name(MSMT17, image.rsplit("/", 1)[-1])
        if parsed is None or not 1 <= parsed[1] <= MSMT17.num_cameras:
            raise UserError(f"{path}, line {line_no}: {image} does not follow the MSMT17 naming "
                            f"(like {MSMT17.example}, cameras 01-{MSMT17.num_cameras})")
        entries.append((f"{folder}/{image}", to_int(path, line_no, "person", person), parsed[1]))
    return entries


def prepare(root, out_dir):
    """Write train.txt, query.txt and gallery.txt for the data set in root; return {split: list path}."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"MSMT17 folder {root} not found")
    folders = {part: image_folder(root, part) for part in IMAGE_FOLDERS}
    # (part, person) keys: the official lists number training and test persons from 0 each.
    splits = {name: [(path, (part, person), camera) for file in files
                     for path, person, camera in read_list(root / file, folders[part])]
              for name, part, files in SPLITS}
    for name, _, files in SPLITS:
        check_images(root, [path for path, _, _ in splits[name]], " and ".join(files))
    label_of = number_classes([person for _, person, _ in splits["train"]],
                              [person for name in ("query", "gallery") for _, person, _ in splits[name]])
    written = write_lists(out_dir, {name: [(path, label_of[person], camera) for path, person, camera in rows]
                                    for name, rows in splits.items()})
    print(f"evaluate with --data_dir {root} --query_list {written['query']} "
          f"--gallery_list {written['gallery']} --with_camera True")
    return written


def main(argv=None):
    args = parse_args(argv, __doc__.split("\n")[0], "MSMT17_V1 or MSMT17_V2", DEFAULT_OUT_DIR,
                      "train.txt, query.txt and gallery.txt")
    return prepare(args.dataset_dir, args.out_dir)


if __name__ == "__main__":
    run_main(main)
