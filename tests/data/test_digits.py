"""data/digits.py: the offline default data set built from sklearn's digits."""
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import data.digits
from data.digits import prepare_digits
from utility.errors import UserError


@pytest.fixture(scope="module")
def source():
    from sklearn.datasets import load_digits  # imported here: sklearn takes ~2 s to load in every test process

    return load_digits()


@pytest.fixture
def few_digits(source, monkeypatch):
    """The first 200 digits as the whole source, for the tests of how a build starts, stops and ends: the same
    steps as the full set's 1797 images, at a ninth of the files."""
    import sklearn.datasets
    from sklearn.utils import Bunch

    few = Bunch(images=source.images[:200], target=source.target[:200])
    monkeypatch.setattr(sklearn.datasets, "load_digits", lambda: few)
    return few


@pytest.fixture
def built(digits_set):
    return digits_set  # the full set, built once per test run by prepare_digits (tests/conftest.py)


def read_list(path):
    with open(path) as handle:
        return [(line.split()[0], int(line.split()[1])) for line in handle]


def assert_complete(data_dir, train_list, val_list, source):
    train, val = read_list(train_list), read_list(val_list)
    counts = np.bincount(source.target, minlength=10)
    assert len(train) == counts[:5].sum() and len(val) == counts[5:].sum()
    assert {label for _, label in train} == {0, 1, 2, 3, 4}
    assert {label for _, label in val} == {5, 6, 7, 8, 9}
    for rel_path, _ in train + val:
        assert os.path.isfile(os.path.join(data_dir, rel_path)), rel_path


def test_split_counts_and_paths(built, source):
    data_dir, train_list, val_list = built
    assert Path(train_list).parent == Path(data_dir) and Path(val_list).name == "val.txt"
    assert_complete(*built, source)


def test_images_match_the_source_digits(built, source):
    data_dir, train_list, val_list = built
    entries = read_list(train_list) + read_list(val_list)
    assert len(entries) == len(source.images)
    for rel_path, label in entries[::97]:
        index = int(Path(rel_path).stem)
        assert label == source.target[index]
        with Image.open(os.path.join(data_dir, rel_path)) as image:
            assert image.size == (32, 32)
            pixels = np.asarray(image.convert("L"), dtype=np.float64)
        block_means = pixels.reshape(8, 4, 8, 4).mean(axis=(1, 3))
        assert np.corrcoef(block_means.ravel(), source.images[index].ravel())[0, 1] > 0.9


def test_second_call_reuses_the_set(built):
    modified = os.path.getmtime(built[1])
    assert prepare_digits(built[0]) == built
    assert os.path.getmtime(built[1]) == modified


def test_interrupted_build_leaves_nothing_that_looks_finished(tmp_path, monkeypatch, few_digits):
    written = []

    def failing_to_png(pixels):
        if len(written) == 100:
            raise KeyboardInterrupt
        written.append(1)
        return original_to_png(pixels)

    original_to_png = data.digits.to_png
    monkeypatch.setattr(data.digits, "to_png", failing_to_png)
    with pytest.raises(KeyboardInterrupt):
        prepare_digits(tmp_path / "digits")
    assert os.listdir(tmp_path) == []

    monkeypatch.setattr(data.digits, "to_png", original_to_png)
    assert_complete(*prepare_digits(tmp_path / "digits"), few_digits)


def test_leftover_of_a_killed_build_is_not_used_and_old_ones_are_removed(tmp_path, few_digits):
    # a process killed mid-build leaves its partial folder, even with a list in it
    old = tmp_path / ".partial-digits-999999"
    (old / "images" / "0").mkdir(parents=True)
    (old / "train.txt").write_text("images/0/0000.png 0\n")
    long_ago = os.path.getmtime(old) - 2 * data.digits.ABANDONED_AFTER_S
    os.utime(old, (long_ago, long_ago))
    recent = tmp_path / ".partial-digits-999998"  # may still be running: left alone
    recent.mkdir()

    assert_complete(*prepare_digits(tmp_path / "digits"), few_digits)
    assert sorted(os.listdir(tmp_path)) == [".partial-digits-999998", "digits"]


def test_a_concurrent_build_that_finished_first_wins(tmp_path, monkeypatch, few_digits):
    out_dir = tmp_path / "digits"
    original_write = data.digits.write_digits

    def write_while_another_process_finishes(folder):
        original_write(folder)
        shutil.copytree(folder, out_dir)
        (out_dir / "from_the_other_process").touch()

    monkeypatch.setattr(data.digits, "write_digits", write_while_another_process_finishes)
    assert_complete(*prepare_digits(out_dir), few_digits)
    assert (out_dir / "from_the_other_process").exists()
    assert os.listdir(tmp_path) == ["digits"]


def test_unfinished_folder_at_the_target_is_a_user_error(tmp_path):
    (tmp_path / "digits" / "images").mkdir(parents=True)
    with pytest.raises(UserError, match="not a finished digits data set"):
        prepare_digits(tmp_path / "digits")
