"""Omniglot lists: train on images_background_small1, test on the new alphabets of small2.

Each character (an alphabet/characterNN folder, 20 drawings) is one class.
The training set is every character of images_background_small1; the test
set is the characters of the images_background_small2 alphabets that small1
does not contain, so no test class (nor its alphabet) is seen in training.
The needed images are unpacked under --out_dir, and train.txt / val.txt there
list them relative to it, with labels 0..N-1 (train) and N.. (val).

    python data/omniglot.py --small1 ../shared/data/omniglot/images_background_small1.zip \\
        --small2 ../shared/data/omniglot/images_background_small2.zip --out_dir data/omniglot
"""
import argparse
import os
import shutil
import zipfile
from pathlib import Path, PurePosixPath

from utility.errors import UserError, run_main

DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "omniglot"


def index_images(source):
    """Sorted `set/alphabet/character/file.png` paths in an Omniglot zip or folder.

    `set` is the zip's top folder (or the folder's own name), so the same
    relative path locates the image in the source and under the output dir.
    """
    source = Path(source)
    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as archive:
            paths = [name for name in archive.namelist() if _is_image_entry(PurePosixPath(name))]
    elif source.is_dir():
        paths = [f"{source.name}/{image.relative_to(source).as_posix()}"
                 for image in source.glob("*/*/*.png") if not _hidden(image.relative_to(source))]
    elif source.exists():
        raise UserError(f"{source} is neither a zip file nor a folder")
    else:
        raise UserError(f"Omniglot source {source} not found")
    if not paths:
        raise UserError(f"{source} holds no alphabet/character/image.png files: "
                        f"expected an images_background*.zip or its unpacked folder")
    _check_one_set(source, paths)
    return sorted(paths)


def _hidden(path):
    return any(part.startswith((".", "__MACOSX")) for part in path.parts)


def _is_image_entry(path):
    """set/alphabet/character/file.png, nothing hidden and no way out of the output dir."""
    return (len(path.parts) == 4 and path.suffix.lower() == ".png" and not path.is_absolute()
            and ".." not in path.parts and not _hidden(path))


def _check_one_set(source, paths):
    set_names = sorted({path.split("/")[0] for path in paths})
    if len(set_names) != 1:
        raise UserError(f"{source} holds several top folders ({', '.join(set_names)}): "
                        f"expected one images_background* folder")


def alphabet_of(path):
    return path.split("/")[1]


def character_of(path):
    """The class of an image: its alphabet/character folder."""
    return "/".join(path.split("/")[1:3])


def unpack(source, paths, out_dir):
    """Copy the given images of a zip or folder to out_dir/<path>."""
    source = Path(source)
    for folder in sorted({os.path.dirname(path) for path in paths}):
        (Path(out_dir) / folder).mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        for path in paths:
            shutil.copyfile(source.parent / path, Path(out_dir) / path)
        return
    with zipfile.ZipFile(source) as archive:
        for path in paths:
            (Path(out_dir) / path).write_bytes(archive.read(path))


def labelled(paths, first_label):
    """(path, label) pairs; characters numbered from first_label in sorted order."""
    characters = sorted({character_of(path) for path in paths})
    label_of = {character: first_label + index for index, character in enumerate(characters)}
    return [(path, label_of[character_of(path)]) for path in paths]


def write_list(path, entries):
    """Write `path LABEL` lines; the file appears only once complete."""
    partial = Path(path).with_name(f".partial-{Path(path).name}")
    partial.write_text("".join(f"{rel_path} {label}\n" for rel_path, label in entries), encoding="utf-8")
    os.replace(partial, path)


def prepare_omniglot(small1, small2, out_dir=DEFAULT_OUT_DIR):
    """Unpack the split under out_dir and write its lists; return (data_dir, train_list, val_list)."""
    train_paths = index_images(small1)
    small2_paths = index_images(small2)
    seen_alphabets = {alphabet_of(path) for path in train_paths}
    val_paths = [path for path in small2_paths if alphabet_of(path) not in seen_alphabets]
    if not val_paths:
        raise UserError(f"every alphabet of {small2} is also in {small1}: nothing is left to test on")

    unpack(small1, train_paths, out_dir)
    unpack(small2, val_paths, out_dir)
    train = labelled(train_paths, first_label=0)
    val = labelled(val_paths, first_label=len({character_of(path) for path in train_paths}))
    train_list, val_list = os.path.join(out_dir, "train.txt"), os.path.join(out_dir, "val.txt")
    write_list(train_list, train)
    write_list(val_list, val)

    for name, list_path, part in (("train", train_list, train), ("val", val_list, val)):
        alphabets = sorted({alphabet_of(path) for path, _ in part})
        print(f"{name}: {len({label for _, label in part})} classes, {len(part)} images, "
              f"{len(alphabets)} alphabets ({', '.join(alphabets)}) -> {list_path}")
    shared = sorted(seen_alphabets & {alphabet_of(path) for path in small2_paths})
    if shared:
        print(f"left out of val (also in {Path(small1).name}): {', '.join(shared)}")
    return str(out_dir), train_list, val_list


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small1", required=True, help="images_background_small1.zip or its unpacked folder (train)")
    parser.add_argument("--small2", required=True, help="images_background_small2.zip or its unpacked folder (val)")
    parser.add_argument("--out_dir", default=str(DEFAULT_OUT_DIR), help="images are unpacked here; pass it as --data_dir")
    args = parser.parse_args(argv)
    prepare_omniglot(args.small1, args.small2, args.out_dir)


if __name__ == "__main__":
    run_main(main)
