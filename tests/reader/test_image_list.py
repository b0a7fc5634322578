"""List-file parsing: labels, class ids, and a clear error for each kind of bad input."""
import os

import numpy as np
import pytest

from reader import read_image_list
from tests.reader_fixtures import make_dataset, write_image, write_list
from utility.errors import UserError


def test_labels_classes_and_paths(tmp_path):
    for name in ("a.png", "b b.png", "c.png", "d.png"):
        write_image(tmp_path / "img" / name)
    lines = ["img/a.png 7", "", "img/b b.png -3", "  ", "img/c.png 7", "img/d.png 100"]
    list_path = write_list(tmp_path / "l.txt", lines)
    image_list = read_image_list(list_path, str(tmp_path))
    assert image_list.paths == [os.path.join(str(tmp_path), "img", n) for n in ("a.png", "b b.png", "c.png", "d.png")]
    assert image_list.labels.tolist() == [7, -3, 7, 100]
    assert image_list.classes.tolist() == [-3, 7, 100]
    assert image_list.class_ids.tolist() == [1, 0, 1, 2]
    assert image_list.class_ids.dtype == np.int64 and image_list.labels.dtype == np.int64
    assert np.array_equal(image_list.classes[image_list.class_ids], image_list.labels)
    assert image_list.num_classes == 3 and len(image_list) == 4
    assert image_list.source == list_path


def test_unlabelled_list_when_labels_not_required(tmp_path):
    write_image(tmp_path / "x y.png")
    write_image(tmp_path / "z.png")
    list_path = write_list(tmp_path / "l.txt", ["x y.png", "z.png"])
    image_list = read_image_list(list_path, str(tmp_path), require_labels=False)
    assert image_list.paths == [str(tmp_path / "x y.png"), str(tmp_path / "z.png")]
    assert image_list.labels is None and image_list.class_ids is None and image_list.num_classes == 0


def test_labelled_list_read_without_requiring_labels_keeps_labels(tmp_path):
    list_path, data_dir = make_dataset(tmp_path, [2, 1])
    image_list = read_image_list(list_path, data_dir, require_labels=False)
    assert image_list.labels.tolist() == [10, 10, 20]


def _error(tmp_path, lines, **kwargs):
    list_path = write_list(tmp_path / "bad.txt", lines)
    with pytest.raises(UserError) as info:
        read_image_list(list_path, str(tmp_path), **kwargs)
    return str(info.value), list_path


def test_missing_list_file(tmp_path):
    with pytest.raises(UserError, match="list file not found: .*nope.txt"):
        read_image_list(str(tmp_path / "nope.txt"), str(tmp_path))


def test_empty_list(tmp_path):
    message, list_path = _error(tmp_path, ["", "   "])
    assert list_path in message and "no images" in message


def test_line_without_label(tmp_path):
    write_image(tmp_path / "a.png")
    message, list_path = _error(tmp_path, ["a.png 1", "a.png"])
    assert f"{list_path}, line 2" in message and "LABEL" in message


def test_non_integer_label(tmp_path):
    message, list_path = _error(tmp_path, ["a.png 1", "", "a.png cat"])
    assert f"{list_path}, line 3" in message and "'cat'" in message and "not an integer" in message


def test_mixed_labelled_and_bare_lines_without_required_labels(tmp_path):
    write_image(tmp_path / "a.png")
    message, list_path = _error(tmp_path, ["a.png 1", "a.png"], require_labels=False)
    assert f"{list_path}, line 2" in message and "no label" in message


def test_missing_images_listed_up_front_with_total(tmp_path):
    write_image(tmp_path / "ok.png")
    lines = ["ok.png 0"] + [f"gone_{i}.png {i}" for i in range(8)]
    message, list_path = _error(tmp_path, lines)
    assert list_path in message and "8 of 9 images not found" in message
    assert "line 2: " + str(tmp_path / "gone_0.png") in message
    assert "gone_4.png" in message and "gone_5.png" not in message and "and 3 more" in message


def test_missing_images_not_checked_when_asked(tmp_path):
    list_path = write_list(tmp_path / "l.txt", ["gone.png 1"])
    assert read_image_list(list_path, str(tmp_path), check_files=False).paths == [str(tmp_path / "gone.png")]


# --- camera column, byte-order mark, duplicate paths ---

from reader.image_list import check_unique_paths  # noqa: E402


def test_camera_column_split_from_the_right(tmp_path):
    for name in ("q/0001_c1s1_001051_00.jpg", "g/a b.jpg", "g/c.jpg"):
        write_image(tmp_path / name)
    lines = ["q/0001_c1s1_001051_00.jpg 1 1", "", "g/a b.jpg -1 3", "g/c.jpg 0 6"]
    image_list = read_image_list(write_list(tmp_path / "l.txt", lines), str(tmp_path), with_camera=True)
    assert image_list.paths[1] == str(tmp_path / "g" / "a b.jpg")
    assert image_list.labels.tolist() == [1, -1, 0] and image_list.cameras.tolist() == [1, 3, 6]
    assert image_list.cameras.dtype == np.int64
    assert image_list.line_numbers == [1, 3, 4]


def test_no_cameras_without_the_flag(tmp_path):
    list_path, data_dir = make_dataset(tmp_path, [2])
    assert read_image_list(list_path, data_dir).cameras is None


def test_camera_line_without_camera(tmp_path):
    write_image(tmp_path / "a.png")
    message, list_path = _error(tmp_path, ["a.png 1 2", "a.png 1"], with_camera=True)
    assert f"{list_path}, line 2" in message and "LABEL CAMERA" in message


def test_non_integer_camera(tmp_path):
    write_image(tmp_path / "a.png")
    message, list_path = _error(tmp_path, ["a.png 1 c2"], with_camera=True)
    assert f"{list_path}, line 1" in message and "camera 'c2' is not an integer" in message


def test_camera_list_read_without_the_flag_hints_at_it(tmp_path):
    write_image(tmp_path / "a.png")
    message, _ = _error(tmp_path, ["a.png 1 2"])
    assert "not found" in message and "--with_camera True" in message


def test_byte_order_mark_is_ignored(tmp_path):
    write_image(tmp_path / "a.png")
    list_path = tmp_path / "bom.txt"
    list_path.write_bytes("\ufeffa.png 3\n".encode("utf-8"))
    image_list = read_image_list(str(list_path), str(tmp_path))
    assert image_list.paths == [str(tmp_path / "a.png")] and image_list.labels.tolist() == [3]


def test_duplicates_found_with_their_lines(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        write_image(tmp_path / name)
    lines = ["b.png 1", "a.png 1", "c.png 2", "./a.png 1", "", "b.png 1", "a.png 1"]
    image_list = read_image_list(write_list(tmp_path / "l.txt", lines), str(tmp_path))
    repeated = image_list.duplicates()
    assert list(repeated.items()) == [(str(tmp_path / "a.png"), [2, 4, 7]), (str(tmp_path / "b.png"), [1, 6])]
    with pytest.raises(UserError) as info:
        check_unique_paths(image_list)
    message = str(info.value)
    assert message.startswith(f"{image_list.source}: 2 image path(s) listed more than once (3 extra line(s))")
    assert f"first: {tmp_path / 'a.png'} on lines 2, 4 and 7" in message and "\n" not in message


def test_a_path_listed_very_often_gives_a_short_error(tmp_path):
    write_image(tmp_path / "a.png")
    image_list = read_image_list(write_list(tmp_path / "l.txt", ["a.png 1"] * 200_000), str(tmp_path))
    with pytest.raises(UserError) as info:
        check_unique_paths(image_list)
    message = str(info.value)
    assert "(199999 extra line(s))" in message and "on lines 1, 2, 3, 4 and 199996 more." in message
    assert len(message.replace(str(tmp_path), "")) < 200  # besides the list's and the image's paths


def test_unique_list_passes_the_duplicate_check(tmp_path):
    list_path, data_dir = make_dataset(tmp_path, [2, 1])
    image_list = read_image_list(list_path, data_dir)
    assert image_list.duplicates() == {}
    check_unique_paths(image_list)
