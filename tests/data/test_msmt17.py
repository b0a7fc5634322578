"""data/msmt17.py on fake MSMT17_V1 and MSMT17_V2 trees with the official lists and file names."""
import os
import subprocess
import sys

import pytest

from data import msmt17
from reader import read_image_list
from utility.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Official list files: `PERSON_FOLDER/NAME PERSON` lines; NAME = person, image number, camera, date+time, frame, box.
LISTS = {
    "list_train.txt": ["0000/0000_000_01_0303morning_0015_0.jpg 0", "0000/0000_001_07_0303noon_0120_1.jpg 0",
                       "0001/0001_000_15_0113afternoon_0444_2.jpg 1"],
    "list_val.txt": ["0002/0002_000_03_0302morning_0009_0.jpg 2"],
    "list_query.txt": ["0000/0000_000_04_0114morning_0101_0.jpg 0", "0001/0001_000_02_0114noon_0311_1.jpg 1"],
    "list_gallery.txt": ["0000/0000_001_09_0114morning_0208_3.jpg 0", "0001/0001_002_02_0114noon_0390_0.jpg 1",
                         "0001/0001_003_12_0114afternoon_0017_1.jpg 1"],
}
TEST_LISTS = ("list_query.txt", "list_gallery.txt")


def make_tree(root, folders=("train", "test"), lists=LISTS):
    root.mkdir(parents=True)
    for name, lines in lists.items():
        (root / name).write_text("".join(line + "\n" for line in lines))
        folder = folders[1] if name in TEST_LISTS else folders[0]
        for line in lines:
            image = root / folder / line.split()[0]
            image.parent.mkdir(parents=True, exist_ok=True)
            image.write_bytes(b"")
    return root


def read(path):
    with open(path, encoding="utf-8") as handle:
        return [line.split() for line in handle.read().splitlines()]


def test_v1_lists_with_cameras(tmp_path, capsys):
    root = make_tree(tmp_path / "MSMT17_V1")
    written = msmt17.main(["--dataset_dir", str(root), "--out_dir", str(tmp_path / "lists")])
    assert sorted(os.listdir(tmp_path / "lists")) == ["gallery.txt", "query.txt", "train.txt"]
    # list_train then list_val; persons 0, 1, 2 keep their numbers; cameras from the file names.
    assert read(written["train"]) == [["train/0000/0000_000_01_0303morning_0015_0.jpg", "0", "1"],
                                      ["train/0000/0000_001_07_0303noon_0120_1.jpg", "0", "7"],
                                      ["train/0001/0001_000_15_0113afternoon_0444_2.jpg", "1", "15"],
                                      ["train/0002/0002_000_03_0302morning_0009_0.jpg", "2", "3"]]
    # Test persons 0 and 1 are other people than training persons 0 and 1: they continue from 3.
    assert read(written["query"]) == [["test/0000/0000_000_04_0114morning_0101_0.jpg", "3", "4"],
                                      ["test/0001/0001_000_02_0114noon_0311_1.jpg", "4", "2"]]
    gallery = read_image_list(written["gallery"], str(root), with_camera=True)
    assert gallery.labels.tolist() == [3, 4, 4] and gallery.cameras.tolist() == [9, 2, 12]
    out = capsys.readouterr().out
    assert "train: 4 images, 3 classes (labels 0-2), 4 cameras" in out and "--with_camera True" in out


def test_v2_folders(tmp_path):
    root = make_tree(tmp_path / "MSMT17_V2", folders=("mask_train_v2", "mask_test_v2"))
    written = msmt17.prepare(root, tmp_path / "lists")
    assert read(written["gallery"])[0] == ["mask_test_v2/0000/0000_001_09_0114morning_0208_3.jpg", "3", "9"]
    assert read(written["train"])[-1][0] == "mask_train_v2/0002/0002_000_03_0302morning_0009_0.jpg"


@pytest.mark.parametrize("line, message", [
    ("0003/0003_000_16_0303noon_0001_0.jpg 3", (r"line 2: 0003/0003_000_16_0303noon_0001_0.jpg does not follow the "
                                               r"MSMT17 naming \(like 0000_000_01_0303morning_0015_0.jpg, cameras 01-15")),
    ("0003/person3.jpg 3", "list_val.txt, line 2: 0003/person3.jpg does not follow the MSMT17 naming"),
    ("0003/0003_000_02_0303noon_0001_0.jpg", r"list_val.txt, line 2: expected 2 fields \(path person\)"),
    ("0003/0003_000_02_0303noon_0001_0.jpg x3", "list_val.txt, line 2: person 'x3' is not an integer"),
])
def test_a_malformed_line_is_named(tmp_path, line, message):
    root = make_tree(tmp_path / "MSMT17_V1", lists={**LISTS, "list_val.txt": LISTS["list_val.txt"] + [line]})
    with pytest.raises(UserError, match=message):
        msmt17.prepare(root, tmp_path / "lists")


def test_missing_files(tmp_path):
    root = make_tree(tmp_path / "MSMT17_V1")
    os.remove(root / "test" / LISTS["list_gallery.txt"][2].split()[0])
    with pytest.raises(UserError, match=r"1 of 3 images listed in list_gallery.txt are missing .*0001_003_12"):
        msmt17.prepare(root, tmp_path / "lists")
    os.remove(root / "list_query.txt")
    with pytest.raises(UserError, match="list_query.txt not found: expected the unpacked MSMT17 folder"):
        msmt17.prepare(root, tmp_path / "lists")
    os.rename(root / "test", root / "testing")
    with pytest.raises(UserError, match="has no test or mask_test_v2 folder"):
        msmt17.prepare(root, tmp_path / "lists")
    with pytest.raises(UserError, match="MSMT17 folder .* not found"):
        msmt17.prepare(tmp_path / "nowhere", tmp_path / "lists")
    assert not (tmp_path / "lists").exists()


def test_runs_as_a_module(tmp_path):
    root = make_tree(tmp_path / "MSMT17_V1")
    done = subprocess.run([sys.executable, "-m", "data.msmt17", "--dataset_dir", str(root), "--out_dir",
                           str(tmp_path / "lists")], check=False, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert len(read(tmp_path / "lists" / "query.txt")) == 2
