"""Data-set preparers: CUB-200-2011 (download_cub200.sh, split.py), Omniglot
(omniglot.py) and the offline default digits set (digits.py)."""
import os

from data.digits import DEFAULT_OUT_DIR as DIGITS_DIR
from data.digits import SPLIT_DESCRIPTION, prepare_digits

DATA_FLAGS = ("data_dir", "train_list", "val_list")


def use_default_dataset_if_needed(args, digits_dir=DIGITS_DIR):
    """Point args at the offline digits set when the user gave no data and CUB is absent.

    Applies only if none of --data_dir/--train_list/--val_list was typed
    (args.explicit) and args.train_list does not exist; then builds or reuses
    the digits set in digits_dir, sets args.data_dir/train_list/val_list, prints
    one line and returns True. Otherwise changes nothing and returns False.
    """
    if set(DATA_FLAGS) & set(getattr(args, "explicit", ())) or os.path.exists(args.train_list):
        return False
    absent_list = args.train_list
    args.data_dir, args.train_list, args.val_list = prepare_digits(digits_dir)
    print(f"No data set given and {absent_list} is absent: using the offline digits data set "
          f"in {_display_path(args.data_dir)} ({SPLIT_DESCRIPTION})", flush=True)
    return True


def _display_path(path):
    """path relative to the current directory when it lies below it, else as is."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative
