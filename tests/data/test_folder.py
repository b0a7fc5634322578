"""data/folder.py: list files from a folder of class subfolders."""
import pytest

from data import folder
from utility.errors import UserError


def test_lists_from_class_subfolders(tmp_path, capsys):
    photos = tmp_path / "photos"
    for relative in ("dog/b.png", "cat/a.JPG", "cat/more/c.jpeg", "cat/.hidden.png", "cat/notes.txt", "loose.png",
                     ".trash/x.png"):
        (photos / relative).parent.mkdir(parents=True, exist_ok=True)
        (photos / relative).write_bytes(b"")
    assert folder.class_images(str(photos)) == [("cat/a.JPG", "cat"), ("cat/more/c.jpeg", "cat"),
                                                ("dog/b.png", "dog")]
    folder.main(["--image_dir", str(photos), "--out_dir", str(tmp_path / "lists")])
    assert (tmp_path / "lists" / "list.txt").read_text() == "cat/a.JPG 0\ncat/more/c.jpeg 0\ndog/b.png 1\n"
    assert (tmp_path / "lists" / "classes.txt").read_text() == "0 cat\n1 dog\n"
    assert "Wrote 3 images of 2 classes" in capsys.readouterr().out


def test_a_folder_without_class_images_is_one_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        folder.class_images(str(tmp_path / "missing"))
    (tmp_path / "loose.png").write_bytes(b"")
    with pytest.raises(UserError, match="no images in class subfolders"):
        folder.class_images(str(tmp_path))
