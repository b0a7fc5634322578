"""data/inshop.py on a fake In-shop Clothes Retrieval tree with the official layout (Eval/, img/)."""
import os
import subprocess
import sys

import pytest

from data import inshop
from utility.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# (image_name, item_id, evaluation_status) as list_eval_partition.txt lists them.
PARTITION = [
    ("img/WOMEN/Dresses/id_00000002/02_1_front.jpg", "id_00000002", "train"),
    ("img/WOMEN/Dresses/id_00000002/02_2_side.jpg", "id_00000002", "train"),
    ("img/MEN/Denim/id_00000080/01_1_front.jpg", "id_00000080", "train"),
    ("img/WOMEN/Skirts/id_00000001/02_1_front.jpg", "id_00000001", "train"),
    ("img/WOMEN/Blouses_Shirts/id_00000007/01_1_front.jpg", "id_00000007", "query"),
    ("img/WOMEN/Blouses_Shirts/id_00000007/01_2_side.jpg", "id_00000007", "gallery"),
    ("img/MEN/Tees_Tanks/id_00000004/01_1_front.jpg", "id_00000004", "query"),
    ("img/MEN/Tees_Tanks/id_00000004/01_4_full.jpg", "id_00000004", "gallery"),
    ("img/MEN/Tees_Tanks/id_00000004/01_7_additional.jpg", "id_00000004", "gallery"),
]


def make_tree(root, rows=PARTITION, image_parent="."):
    (root / "Eval").mkdir(parents=True)
    lines = [f"{len(rows)}\n", "image_name item_id evaluation_status\n"]
    (root / "Eval" / "list_eval_partition.txt").write_text("".join(lines + [" ".join(row) + "\n" for row in rows]))
    for image, _, _ in rows:
        (root / image_parent / image).parent.mkdir(parents=True, exist_ok=True)
        (root / image_parent / image).write_bytes(b"")
    return root


def read(path):
    with open(path, encoding="utf-8") as handle:
        return [line.split() for line in handle.read().splitlines()]


def test_train_query_and_gallery_lists(tmp_path, capsys):
    root = make_tree(tmp_path / "In-shop")
    written = inshop.main(["--dataset_dir", str(root), "--out_dir", str(tmp_path / "lists")])
    assert sorted(os.listdir(tmp_path / "lists")) == ["gallery.txt", "query.txt", "train.txt"]
    # Train items in id order: 1 -> 0, 2 -> 1, 80 -> 2; the test items 4 and 7 continue with 3 and 4.
    assert [label for _, label in read(written["train"])] == ["1", "1", "2", "0"]
    assert read(written["query"]) == [[PARTITION[4][0], "4"], [PARTITION[6][0], "3"]]
    assert read(written["gallery"]) == [[PARTITION[5][0], "4"], [PARTITION[7][0], "3"], [PARTITION[8][0], "3"]]
    out = capsys.readouterr().out
    assert "train: 4 images, 3 classes (labels 0-2)" in out and f"--query_list {written['query']}" in out


def test_images_under_Img_and_the_partition_file_at_the_top(tmp_path):
    root = make_tree(tmp_path / "In-shop", image_parent="Img")
    os.replace(root / "Eval" / "list_eval_partition.txt", root / "list_eval_partition.txt")
    written = inshop.prepare(root, tmp_path / "lists")
    assert read(written["query"])[0] == ["Img/" + PARTITION[4][0], "4"]


@pytest.mark.parametrize("extra, message", [
    ("img/MEN/x.jpg id_00000009 test\n", r"line 12: evaluation_status 'test' is not one of train, query, gallery"),
    ("img/MEN/x.jpg id_00000009\n", r"line 12: expected 3 fields \(image_name item_id evaluation_status\)"),
])
def test_a_malformed_line_is_named(tmp_path, extra, message):
    root = make_tree(tmp_path / "In-shop")
    with open(root / "Eval" / "list_eval_partition.txt", "a") as handle:
        handle.write(extra)
    with pytest.raises(UserError, match=message):
        inshop.prepare(root, tmp_path / "lists")


def test_a_truncated_partition_file(tmp_path):
    root = make_tree(tmp_path / "In-shop")
    path = root / "Eval" / "list_eval_partition.txt"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(UserError, match="announces 9 images but it lists 8"):
        inshop.prepare(root, tmp_path / "lists")


def test_missing_files(tmp_path):
    root = make_tree(tmp_path / "In-shop", PARTITION[:4])
    with pytest.raises(UserError, match="lists no query image"):
        inshop.prepare(root, tmp_path / "lists")
    root = make_tree(tmp_path / "other")
    os.remove(root / PARTITION[8][0])
    with pytest.raises(UserError, match="1 of 9 images listed in list_eval_partition.txt are missing"):
        inshop.prepare(root, tmp_path / "lists")
    with pytest.raises(UserError, match="Eval/list_eval_partition.txt not found"):
        inshop.prepare(tmp_path, tmp_path / "lists")


def test_runs_as_a_module(tmp_path):
    root = make_tree(tmp_path / "In-shop")
    done = subprocess.run([sys.executable, "-m", "data.inshop", "--dataset_dir", str(root), "--out_dir",
                           str(tmp_path / "lists")], check=False, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert len(read(tmp_path / "lists" / "gallery.txt")) == 3
