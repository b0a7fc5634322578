"""use_default_dataset_if_needed: the digits set replaces absent default data only."""
import os
from pathlib import Path

import pytest

import data
from data import use_default_dataset_if_needed
from utility.args import parse_args


@pytest.fixture
def in_empty_dir(tmp_path, monkeypatch):
    """Run from a folder without data/CUB200_train.txt."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_no_data_given_and_no_cub_uses_digits(in_empty_dir, capsys):
    args = parse_args("train", ["--lr", "0.1"])
    digits_dir = in_empty_dir / "built" / "digits"

    assert use_default_dataset_if_needed(args, digits_dir=digits_dir)
    assert (args.data_dir, args.train_list, args.val_list) == (
        str(digits_dir), str(digits_dir / "train.txt"), str(digits_dir / "val.txt"))
    assert os.path.isfile(args.train_list) and os.path.isfile(args.val_list)
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["No data set given and data/CUB200_train.txt is absent: using the offline digits "
                     "data set in built/digits (train digits 0-4, test 5-9)"]


@pytest.mark.parametrize("flags", [["--data_dir", "mine"], ["--train_list=mine.txt"], ["--val_list", "v.txt"]])
def test_data_flags_typed_by_the_user_are_respected(in_empty_dir, flags):
    args = parse_args("train", flags)
    before = vars(args).copy()
    assert not use_default_dataset_if_needed(args, digits_dir=in_empty_dir / "digits")
    assert vars(args) == before
    assert not (in_empty_dir / "digits").exists()


def test_present_cub_list_is_left_alone(in_empty_dir):
    (in_empty_dir / "data").mkdir()
    (in_empty_dir / "data" / "CUB200_train.txt").write_text("images/001.A/a.jpg 1\n")
    args = parse_args("eval", [])
    before = vars(args).copy()
    assert not use_default_dataset_if_needed(args, digits_dir=in_empty_dir / "digits")
    assert vars(args) == before


def test_default_digits_folder_belongs_to_the_repo_not_the_cwd():
    assert data.DIGITS_DIR.is_absolute()
    assert data.DIGITS_DIR == Path(data.__file__).resolve().parent / "digits"
