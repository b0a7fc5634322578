"""Write the zero-shot CUB-200-2011 lists: classes 1-100 train, 101-200 val.

Reads images.txt and image_class_labels.txt of an extracted CUB_200_2011
folder and writes CUB200_train.txt and CUB200_val.txt, one
`images/<class folder>/<file>.jpg LABEL` line per image, paths relative to
the CUB folder (pass it as --data_dir) and labels the official class ids.

    python data/split.py --cub_dir data/CUB_200_2011 --out_dir data
"""
import argparse
import os
from pathlib import Path

from utility.errors import UserError, run_main

DATA_ROOT = Path(__file__).resolve().parent
LAST_TRAIN_CLASS = 100
MISSING_SHOWN = 3  # how many missing images an error message names


def read_id_table(path):
    """{image id: value} from a CUB metadata file of `<id> <value>` lines."""
    if not path.is_file():
        raise UserError(f"{path} not found: the CUB_200_2011 folder is incomplete "
                        f"(run data/download_cub200.sh)")
    table = {}
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise UserError(f"{path}, line {line_no}: expected '<image id> <value>', got {line!r}")
        table[int(parts[0])] = parts[1].strip()
    return table


def cub_entries(cub_dir):
    """(path relative to cub_dir, class id) of every image, in image id order."""
    cub_dir = Path(cub_dir)
    if not cub_dir.is_dir():
        raise UserError(f"CUB folder {cub_dir} not found (run data/download_cub200.sh, "
                        f"or pass --cub_dir)")
    names = read_id_table(cub_dir / "images.txt")
    classes = read_id_table(cub_dir / "image_class_labels.txt")
    unlabelled = sorted(set(names) - set(classes))
    if unlabelled:
        raise UserError(f"{cub_dir / 'image_class_labels.txt'} has no class for image id {unlabelled[0]}")
    bad = next((image_id for image_id in sorted(names) if not classes[image_id].isdigit()), None)
    if bad is not None:
        raise UserError(f"{cub_dir / 'image_class_labels.txt'}: class {classes[bad]!r} of image id {bad} "
                        f"is not an integer")
    entries = [(f"images/{names[image_id]}", int(classes[image_id])) for image_id in sorted(names)]
    _check_images_exist(cub_dir, entries)
    return entries


def _check_images_exist(cub_dir, entries):
    missing = [path for path, _ in entries if not (cub_dir / path).is_file()]
    if missing:
        shown = ", ".join(missing[:MISSING_SHOWN])
        raise UserError(f"{len(missing)} of {len(entries)} images listed in images.txt are missing "
                        f"under {cub_dir} (e.g. {shown}): the folder is incomplete; delete it and "
                        f"run data/download_cub200.sh again")


def write_list(path, entries):
    """Write `path LABEL` lines; the file appears only once complete."""
    partial = os.path.join(os.path.dirname(path), f".partial-{os.path.basename(path)}")
    with open(partial, "w", encoding="utf-8") as handle:
        handle.writelines(f"{rel_path} {label}\n" for rel_path, label in entries)
    os.replace(partial, path)


def split_cub(cub_dir, out_dir):
    """Write CUB200_train.txt and CUB200_val.txt into out_dir; return their paths."""
    entries = cub_entries(cub_dir)
    train = [entry for entry in entries if entry[1] <= LAST_TRAIN_CLASS]
    val = [entry for entry in entries if entry[1] > LAST_TRAIN_CLASS]
    os.makedirs(out_dir, exist_ok=True)
    train_list = os.path.join(out_dir, "CUB200_train.txt")
    val_list = os.path.join(out_dir, "CUB200_val.txt")
    write_list(train_list, train)
    write_list(val_list, val)
    for name, path, part in (("train", train_list, train), ("val", val_list, val)):
        print(f"{name}: {len(part)} images of {len({label for _, label in part})} classes -> {path}")
    return train_list, val_list


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cub_dir", default=str(DATA_ROOT / "CUB_200_2011"),
                        help="the extracted CUB_200_2011 folder (holds images.txt)")
    parser.add_argument("--out_dir", default=str(DATA_ROOT), help="where the two list files go")
    args = parser.parse_args(argv)
    split_cub(args.cub_dir, args.out_dir)


if __name__ == "__main__":
    run_main(main)
