"""Market-1501 re-identification lists: train.txt, query.txt, gallery.txt with cameras.

From the unpacked Market-1501-v15.09.15 folder (bounding_box_train, query,
bounding_box_test; names like 0002_c1s1_000451_03.jpg). Junk images (-1) are
left out, distractors (0000) stay in the gallery: see data/reid_lists.py.

    python data/market1501.py --dataset_dir /path/to/Market-1501-v15.09.15 --out_dir data/market1501
"""
from pathlib import Path

from data.reid_lists import MARKET1501, cli
from utility.errors import run_main

DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "market1501"


def main(argv=None):
    return cli(MARKET1501, DEFAULT_OUT_DIR, argv, description=__doc__.split("\n")[0])


if __name__ == "__main__":
    run_main(main)
