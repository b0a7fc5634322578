"""DukeMTMC-reID re-identification lists: train.txt, query.txt, gallery.txt with cameras.

From the unpacked DukeMTMC-reID folder (bounding_box_train, query,
bounding_box_test; names like 0005_c2_f0046985.jpg, cameras 1-8). See
data/reid_lists.py for the list format.

    python data/dukemtmc.py --dataset_dir /path/to/DukeMTMC-reID --out_dir data/dukemtmc
"""
from pathlib import Path

from data.reid_lists import DUKEMTMC, cli
from utility.errors import run_main

DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "dukemtmc"


def main(argv=None):
    return cli(DUKEMTMC, DEFAULT_OUT_DIR, argv, description=__doc__.split("\n")[0])


if __name__ == "__main__":
    run_main(main)
