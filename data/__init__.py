"""Data-set preparers, each writing list files: CUB-200-2011 (download_cub200.sh, split.py), Omniglot
(omniglot.py), Stanford Online Products (sop.py), Cars196 (cars196.py), In-shop Clothes (inshop.py),
Market-1501, DukeMTMC-reID and MSMT17 (market1501.py, dukemtmc.py, msmt17.py), a folder of class
subfolders (folder.py), and the offline default digits set (digits.py)."""
import os

from data.digits import DEFAULT_OUT_DIR as DIGITS_DIR
from data.digits import SPLIT_DESCRIPTION, prepare_digits

DATA_FLAGS = ("data_dir", "train_list", "val_list")


def default_dataset(typed, train_list, digits_dir=DIGITS_DIR):
    """The offline digits set's {data_dir, train_list, val_list} when the user gave no data and CUB is absent.

    Applies only if none of --data_dir/--train_list/--val_list is in `typed` and `train_list`
    does not exist; then builds or reuses the digits set in digits_dir, prints one line and
    returns the three paths. Otherwise returns None.
    """
    if set(DATA_FLAGS) & set(typed) or os.path.exists(train_list):
        return None
    paths = dict(zip(DATA_FLAGS, prepare_digits(digits_dir)))
    print(f"No data set given and {train_list} is absent: using the offline digits data set "
          f"in {_display_path(paths['data_dir'])} ({SPLIT_DESCRIPTION})", flush=True)
    return paths


def _display_path(path):
    """path relative to the current directory when it lies below it, else as is."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative
