"""data/sop.py on a fake Stanford_Online_Products tree with the official file layout."""
import os
import subprocess
import sys

import pytest

from data import sop
from reader import read_image_list
from utility.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEADER = "image_id class_id super_class_id path\n"
# (image_id, class_id, super_class_id, path): products 1-3 train, 11319-11320 test, as in the official files.
TRAIN = [(1, 1, 1, "bicycle_final/111085122871_0.JPG"), (2, 1, 1, "bicycle_final/111085122871_1.JPG"),
         (3, 2, 1, "bicycle_final/111265328556_0.JPG"), (4, 3, 2, "cabinet_final/110794233187_0.JPG"),
         (5, 3, 2, "cabinet_final/110794233187_3.JPG")]
TEST = [(59552, 11319, 1, "bicycle_final/111085122871_9.JPG"), (59553, 11320, 2, "cabinet_final/111222333444_0.JPG"),
        (59554, 11319, 1, "bicycle_final/111085122871_8.JPG")]


def make_tree(root, train=TRAIN, test=TEST):
    for name, rows in (("Ebay_train.txt", train), ("Ebay_test.txt", test)):
        os.makedirs(root, exist_ok=True)
        (root / name).write_text(HEADER + "".join(" ".join(map(str, row)) + "\n" for row in rows))
        for row in rows:
            (root / row[3]).parent.mkdir(parents=True, exist_ok=True)
            (root / row[3]).write_bytes(b"")
    return root


def read(path):
    with open(path, encoding="utf-8") as handle:
        return [line.split() for line in handle.read().splitlines()]


def test_lists_follow_the_official_split(tmp_path, capsys):
    root = make_tree(tmp_path / "Stanford_Online_Products")
    written = sop.main(["--dataset_dir", str(root), "--out_dir", str(tmp_path / "lists")])
    assert sorted(os.listdir(tmp_path / "lists")) == ["train.txt", "val.txt"]
    assert read(written["train"]) == [[row[3], str(label)] for row, label in zip(TRAIN, [0, 0, 1, 2, 2])]
    # Test products continue the numbering: 11319 -> 3, 11320 -> 4.
    assert read(written["val"]) == [[TEST[0][3], "3"], [TEST[1][3], "4"], [TEST[2][3], "3"]]
    out = capsys.readouterr().out
    assert "train: 5 images, 3 classes (labels 0-2)" in out and "val: 3 images, 2 classes (labels 3-4)" in out
    images = read_image_list(written["val"], str(root))
    assert images.labels.tolist() == [3, 4, 3]


@pytest.mark.parametrize("line, message", [
    ("6 4 2\n", r"Ebay_train.txt, line 7: expected 4 fields \(image_id class_id super_class_id path\)"),
    ("6 four 2 cabinet_final/1_0.JPG\n", r"Ebay_train.txt, line 7: class_id 'four' is not an integer"),
])
def test_a_malformed_line_is_named(tmp_path, line, message):
    root = make_tree(tmp_path / "sop")
    with open(root / "Ebay_train.txt", "a") as handle:
        handle.write(line)
    with pytest.raises(UserError, match=message):
        sop.prepare(root, tmp_path / "lists")


def test_missing_files(tmp_path):
    root = make_tree(tmp_path / "sop")
    os.remove(root / TEST[1][3])
    with pytest.raises(UserError, match=r"1 of 3 images listed in Ebay_test.txt are missing .*111222333444_0.JPG"):
        sop.prepare(root, tmp_path / "lists")
    os.remove(root / "Ebay_test.txt")
    with pytest.raises(UserError, match="Ebay_test.txt not found: expected the unpacked Stanford_Online_Products"):
        sop.prepare(root, tmp_path / "lists")
    assert not (tmp_path / "lists").exists()


def test_runs_as_a_module(tmp_path):
    root = make_tree(tmp_path / "sop")
    command = [sys.executable, "-m", "data.sop", "--dataset_dir", str(root), "--out_dir", str(tmp_path / "lists")]
    done = subprocess.run(command, check=False, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert len(read(tmp_path / "lists" / "train.txt")) == 5
    os.remove(root / "Ebay_train.txt")
    done = subprocess.run(command, check=False, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
