"""Re-identification lists from the Market-1501 folder layout (Market-1501, DukeMTMC-reID).

Both data sets ship as three folders of person crops whose file names carry the person
and the camera:

    bounding_box_train/   training images              -> train.txt
    query/                one image per person and camera -> query.txt
    bounding_box_test/    the gallery searched           -> gallery.txt

    Market-1501:   0002_c1s1_000451_03.jpg   person 0002, camera 1, sequence 1, frame 000451, box 03
                   -1_c1s1_000401_03.jpg     person -1: junk (a box that is neither good nor bad)
                   0000_c1s1_000151_01.jpg   person 0000: distractor (a false detection)
    DukeMTMC-reID: 0005_c2_f0046985.jpg      person 0005, camera 2, frame 46985

Each list line is `folder/file.jpg PERSON CAMERA`, relative to the data-set folder
(pass it as --data_dir, and --with_camera True to the scripts).

Junk and distractors, as the official Market-1501 evaluation treats them: junk images
(-1) are removed from every ranking, so they change no figure, and are left out of
all three lists here (as reid-strong-baseline and torchreid also do); evaluation/reid.py
still ignores any -1 it is given. Distractors (0000) are wrong matches for every query:
they stay in the gallery, and are left out of train and query (the official folders have
none there). DukeMTMC-reID has neither.
"""
import os
import re
from dataclasses import dataclass
from pathlib import Path

from utility.errors import UserError

JUNK = -1
DISTRACTOR = 0
SPLITS = (("train", "bounding_box_train"), ("query", "query"), ("gallery", "bounding_box_test"))
BAD_SHOWN = 3  # how many unexpected file names an error message names


@dataclass(frozen=True)
class NamingScheme:
    """How one data set names its images."""

    name: str
    pattern: re.Pattern  # the whole file name; groups: person, camera
    example: str
    num_cameras: int


MARKET1501 = NamingScheme("Market-1501", re.compile(r"(-1|\d{4})_c(\d)s\d+_\d{6}_\d{2}\.jpg"),
                          "0002_c1s1_000451_03.jpg", 6)
DUKEMTMC = NamingScheme("DukeMTMC-reID", re.compile(r"(\d{4})_c(\d)_f\d{7}\.jpg"),
                        "0005_c2_f0046985.jpg", 8)


def parse_name(scheme, name):
    """(person, camera) of a file name, or None when it does not follow the scheme."""
    match = scheme.pattern.fullmatch(name)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


def index_folder(root, folder, scheme):
    """Sorted (relative path, person, camera) of the .jpg images of root/folder.

    Other files (Thumbs.db, hidden files) are ignored; a .jpg whose name does not
    follow the scheme, or a camera outside 1..num_cameras, is a UserError.
    """
    directory = Path(root) / folder
    if not directory.is_dir():
        raise UserError(f"{directory} not found: expected the {scheme.name} folders "
                        f"{', '.join(name for _, name in SPLITS)} under {root}")
    entries, bad = [], []
    for name in sorted(os.listdir(directory)):
        if name.startswith(".") or not name.lower().endswith(".jpg"):
            continue
        parsed = parse_name(scheme, name)
        if parsed is None or not 1 <= parsed[1] <= scheme.num_cameras:
            bad.append(name)
            continue
        entries.append((f"{folder}/{name}", *parsed))
    if bad:
        shown = ", ".join(bad[:BAD_SHOWN]) + (f" and {len(bad) - BAD_SHOWN} more" if len(bad) > BAD_SHOWN else "")
        raise UserError(f"{directory}: {len(bad)} image name(s) do not follow the {scheme.name} scheme "
                        f"(like {scheme.example}, cameras 1-{scheme.num_cameras}): {shown}")
    if not entries:
        raise UserError(f"{directory} holds no {scheme.name} images (like {scheme.example})")
    return entries


def keep_for(split, person):
    """Whether an image of this person id goes into the split's list."""
    if person == JUNK:
        return False
    return split == "gallery" or person != DISTRACTOR


def write_list(path, entries):
    """Write `path PERSON CAMERA` lines; the file appears only once complete."""
    partial = Path(path).with_name(f".partial-{Path(path).name}")
    partial.write_text("".join(f"{rel_path} {person} {camera}\n" for rel_path, person, camera in entries),
                       encoding="utf-8")
    os.replace(partial, path)


def prepare(root, out_dir, scheme):
    """Write train.txt, query.txt and gallery.txt for a data set in root; return {split: list path}."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{scheme.name} folder {root} not found")
    indexed = {split: index_folder(root, folder, scheme) for split, folder in SPLITS}
    os.makedirs(out_dir, exist_ok=True)
    written = {}
    for split, _ in SPLITS:
        kept = [entry for entry in indexed[split] if keep_for(split, entry[1])]
        if not kept:
            raise UserError(f"{root / dict(SPLITS)[split]}: no image left once junk and distractors are set aside")
        written[split] = os.path.join(out_dir, f"{split}.txt")
        write_list(written[split], kept)
        people = {person for _, person, _ in kept if person != DISTRACTOR}
        cameras = {camera for _, _, camera in kept}
        junk = sum(person == JUNK for _, person, _ in indexed[split])
        distractors = sum(person == DISTRACTOR for _, person, _ in kept)
        notes = [f"{distractors} distractors (0000) kept"] if distractors else []
        dropped = len(indexed[split]) - len(kept) - junk
        notes += [f"{junk} junk (-1) left out"] if junk else []
        notes += [f"{dropped} distractors left out"] if dropped else []
        print(f"{split}: {len(kept)} images, {len(people)} identities, {len(cameras)} cameras"
              f"{' (' + ', '.join(notes) + ')' if notes else ''} -> {written[split]}")
    shared = ({p for _, p, _ in indexed["train"]} & {p for _, p, _ in indexed["query"]}) - {JUNK, DISTRACTOR}
    if shared:
        print(f"note: {len(shared)} identities are in both bounding_box_train and query "
              f"(the official splits share none)")
    print(f"evaluate with --data_dir {root} --query_list {written['query']} "
          f"--gallery_list {written['gallery']} --with_camera True")
    return written


def cli(scheme, default_out_dir, argv=None, description=None):
    """The preparers' command line: --dataset_dir and --out_dir."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--dataset_dir", required=True,
                        help=f"the unpacked {scheme.name} folder (holds bounding_box_train, query, bounding_box_test)")
    parser.add_argument("--out_dir", default=str(default_out_dir),
                        help="where train.txt, query.txt and gallery.txt go")
    args = parser.parse_args(argv)
    return prepare(args.dataset_dir, args.out_dir, scheme)
