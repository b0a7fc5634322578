"""data/cars196.py on a fake Cars196 folder: a real cars_annos.mat in the official structure, and car_ims/."""
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy.io import savemat

from data import cars196
from utility.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIELDS = ("relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test")
# Classes of images 1..7; the official `test` flag mixes both halves and must not decide the split.
CLASSES = [1, 1, 98, 99, 196, 2, 99]


def write_annotations(path, classes, paths=None):
    """cars_annos.mat as the official file holds it: a 1 x N struct array and 1 x 196 class names."""
    paths = paths or [f"car_ims/{number:06d}.jpg" for number in range(1, len(classes) + 1)]
    annotations = np.empty((1, len(classes)), dtype=[(field, "O") for field in FIELDS])
    for k, (image, label) in enumerate(zip(paths, classes)):
        box = [np.array([[value]], dtype=np.uint16) for value in (3, 5, 90, 60)]
        annotations[0, k] = (np.array([image]), *box, np.array([[label]], dtype=np.uint8),
                             np.array([[k % 2]], dtype=np.uint8))
    class_names = np.empty((1, 196), dtype=object)
    for k in range(196):
        class_names[0, k] = np.array([f"Make Model {k + 1}"])
    savemat(path, {"annotations": annotations, "class_names": class_names})


def make_tree(root, classes=CLASSES):
    (root / "car_ims").mkdir(parents=True)
    write_annotations(root / "cars_annos.mat", classes)
    for number in range(1, len(classes) + 1):
        (root / "car_ims" / f"{number:06d}.jpg").write_bytes(b"")
    return root


def read(path):
    with open(path, encoding="utf-8") as handle:
        return [line.split() for line in handle.read().splitlines()]


def test_classes_1_to_98_train_99_to_196_val(tmp_path, capsys):
    root = make_tree(tmp_path / "cars196")
    written = cars196.main(["--dataset_dir", str(root), "--out_dir", str(tmp_path / "lists")])
    assert read(written["train"]) == [["car_ims/000001.jpg", "0"], ["car_ims/000002.jpg", "0"],
                                      ["car_ims/000003.jpg", "2"], ["car_ims/000006.jpg", "1"]]
    assert read(written["val"]) == [["car_ims/000004.jpg", "3"], ["car_ims/000005.jpg", "4"],
                                    ["car_ims/000007.jpg", "3"]]
    assert "val: 3 images, 2 classes (labels 3-4)" in capsys.readouterr().out


def test_bad_annotations(tmp_path):
    root = make_tree(tmp_path / "cars196")
    write_annotations(root / "cars_annos.mat", [1, 197])
    with pytest.raises(UserError, match=r"cars_annos.mat, annotation 2: expected an image path and a class in 1-196"):
        cars196.prepare(root, tmp_path / "lists")
    write_annotations(root / "cars_annos.mat", [1, 2])
    with pytest.raises(UserError, match="has no image of the val classes"):
        cars196.prepare(root, tmp_path / "lists")
    savemat(root / "cars_annos.mat", {"class_names": np.array(["a"], dtype=object)})
    with pytest.raises(UserError, match="not a Cars196 annotation file"):
        cars196.prepare(root, tmp_path / "lists")
    (root / "cars_annos.mat").write_bytes(b"not a mat file")
    with pytest.raises(UserError, match="not a Cars196 annotation file"):
        cars196.prepare(root, tmp_path / "lists")


def test_missing_files(tmp_path):
    root = make_tree(tmp_path / "cars196")
    os.remove(root / "car_ims" / "000005.jpg")
    with pytest.raises(UserError, match=r"1 of 7 images listed in cars_annos.mat are missing .*car_ims/000005.jpg"):
        cars196.prepare(root, tmp_path / "lists")
    with pytest.raises(UserError, match="cars_annos.mat not found"):
        cars196.prepare(tmp_path / "elsewhere", tmp_path / "lists")


def test_runs_as_a_module(tmp_path):
    root = make_tree(tmp_path / "cars196")
    done = subprocess.run([sys.executable, "-m", "data.cars196", "--dataset_dir", str(root), "--out_dir",
                           str(tmp_path / "lists")], check=False, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert len(read(tmp_path / "lists" / "train.txt")) + len(read(tmp_path / "lists" / "val.txt")) == len(CLASSES)
