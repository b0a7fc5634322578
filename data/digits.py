"""The offline default data set: scikit-learn's bundled handwritten digits.

The 1797 8x8 digits of `sklearn.datasets.load_digits` (no download) are
written as 32x32 grayscale PNGs, with a zero-shot split like CUB's: train on
digits 0-4, test on digits 5-9 (labels are the digits).

    out_dir/images/<digit>/<index>.png
    out_dir/train.txt, out_dir/val.txt    (`images/3/0003.png 3`, relative to out_dir)

The set is built in a `.partial-*` folder beside out_dir and renamed into
place when complete, so an interrupted build never looks finished.
"""
import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from utility.errors import UserError, run_main

DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "digits"
TRAIN_DIGITS = (0, 1, 2, 3, 4)
SPLIT_DESCRIPTION = "train digits 0-4, test 5-9"
IMAGE_SIZE = 32
SOURCE_MAX = 16               # load_digits pixels are ink counts 0..16
ABANDONED_AFTER_S = 600       # a build takes seconds: older partial folders were killed


def prepare_digits(out_dir=DEFAULT_OUT_DIR):
    """Build the digits set in out_dir unless it is there; return (data_dir, train_list, val_list)."""
    out_dir = Path(out_dir)
    if not out_dir.exists():
        _build(out_dir)
    train_list, val_list = out_dir / "train.txt", out_dir / "val.txt"
    if not (train_list.is_file() and val_list.is_file()):
        raise UserError(f"{out_dir} exists but is not a finished digits data set "
                        f"(train.txt or val.txt is missing): delete it to rebuild")
    return str(out_dir), str(train_list), str(val_list)


def _build(out_dir):
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_builds(out_dir)
    partial = out_dir.with_name(f".partial-{out_dir.name}-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        write_digits(partial)
        os.rename(partial, out_dir)
    except OSError:
        if not out_dir.exists():
            raise
        # another process finished the same build first: use its copy
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _remove_abandoned_builds(out_dir):
    """Delete partial folders of builds that were killed (too old to be running)."""
    for partial in out_dir.parent.glob(f".partial-{out_dir.name}-*"):
        if time.time() - partial.stat().st_mtime > ABANDONED_AFTER_S:
            shutil.rmtree(partial, ignore_errors=True)


def write_digits(folder):
    """Write every digit as a PNG under folder/images and the two lists into folder."""
    from sklearn.datasets import load_digits  # imported here: `import data` stays light

    digits = load_digits()
    train, val = [], []
    for index, (pixels, digit) in enumerate(zip(digits.images, digits.target)):
        rel_path = f"images/{digit}/{index:04d}.png"
        (folder / rel_path).parent.mkdir(parents=True, exist_ok=True)
        to_png(pixels).save(folder / rel_path)
        (train if digit in TRAIN_DIGITS else val).append(f"{rel_path} {digit}\n")
    (folder / "train.txt").write_text("".join(train), encoding="utf-8")
    (folder / "val.txt").write_text("".join(val), encoding="utf-8")


def to_png(pixels):
    """An 8x8 array of ink counts 0..16 as a bilinear-upscaled 8-bit grayscale image."""
    gray = np.round(pixels * (255.0 / SOURCE_MAX)).astype(np.uint8)
    return Image.fromarray(gray).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out_dir", default=str(DEFAULT_OUT_DIR), help="where the set is built")
    args = parser.parse_args(argv)
    data_dir, train_list, val_list = prepare_digits(args.out_dir)
    for name, list_path in (("train", train_list), ("val", val_list)):
        with open(list_path, encoding="utf-8") as handle:
            print(f"{name}: {sum(1 for _ in handle)} images -> {list_path}")
    print(f"data_dir: {data_dir}")


if __name__ == "__main__":
    run_main(main)
