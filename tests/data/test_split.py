"""data/split.py on a tiny fake CUB_200_2011 tree."""
import os

import pytest

from data.split import main, split_cub
from utility.errors import UserError

# (image id, class id, class folder, file name); ids deliberately not in class order
FAKE_IMAGES = [
    (1, 1, "001.Black_footed_Albatross", "Black_Footed_Albatross_0001_796111.jpg"),
    (2, 100, "100.Brown_Pelican", "Brown_Pelican_0001_1.jpg"),
    (3, 101, "101.White_Pelican", "White_Pelican_0001_2.jpg"),
    (4, 1, "001.Black_footed_Albatross", "Black_Footed_Albatross_0002_3.jpg"),
    (5, 200, "200.Common_Yellowthroat", "Common_Yellowthroat_0001_4.jpg"),
]


def make_fake_cub(root):
    cub = root / "CUB_200_2011"
    for _, _, folder, name in FAKE_IMAGES:
        (cub / "images" / folder).mkdir(parents=True, exist_ok=True)
        (cub / "images" / folder / name).write_bytes(b"not really a jpeg")
    (cub / "images.txt").write_text("".join(f"{i} {folder}/{name}\n" for i, _, folder, name in FAKE_IMAGES))
    (cub / "image_class_labels.txt").write_text("".join(f"{i} {c}\n" for i, c, _, _ in FAKE_IMAGES))
    return cub


def read_list(path):
    with open(path) as handle:
        return [(line.split()[0], int(line.split()[1])) for line in handle]


def test_classes_1_to_100_train_and_101_to_200_val(tmp_path):
    cub = make_fake_cub(tmp_path)
    train_list, val_list = split_cub(cub, tmp_path / "lists")

    assert read_list(train_list) == [
        ("images/001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.jpg", 1),
        ("images/100.Brown_Pelican/Brown_Pelican_0001_1.jpg", 100),
        ("images/001.Black_footed_Albatross/Black_Footed_Albatross_0002_3.jpg", 1),
    ]
    assert read_list(val_list) == [
        ("images/101.White_Pelican/White_Pelican_0001_2.jpg", 101),
        ("images/200.Common_Yellowthroat/Common_Yellowthroat_0001_4.jpg", 200),
    ]
    for rel_path, _ in read_list(train_list) + read_list(val_list):
        assert (cub / rel_path).is_file()
    assert sorted(os.listdir(tmp_path / "lists")) == ["CUB200_train.txt", "CUB200_val.txt"]


def test_cli_writes_both_lists(tmp_path, capsys):
    cub = make_fake_cub(tmp_path)
    main(["--cub_dir", str(cub), "--out_dir", str(tmp_path)])
    assert len(read_list(tmp_path / "CUB200_train.txt")) == 3
    assert "val: 2 images of 2 classes" in capsys.readouterr().out


def test_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        split_cub(tmp_path / "CUB_200_2011", tmp_path)


def test_missing_metadata_file_is_a_user_error(tmp_path):
    cub = make_fake_cub(tmp_path)
    (cub / "image_class_labels.txt").unlink()
    with pytest.raises(UserError, match="image_class_labels.txt not found"):
        split_cub(cub, tmp_path)


def test_missing_image_is_a_user_error(tmp_path):
    cub = make_fake_cub(tmp_path)
    (cub / "images/200.Common_Yellowthroat/Common_Yellowthroat_0001_4.jpg").unlink()
    with pytest.raises(UserError, match="1 of 5 images .* missing"):
        split_cub(cub, tmp_path)
    assert not (tmp_path / "CUB200_train.txt").exists()
