"""data/omniglot.py on tiny fake archives and on the real small1/small2 zips."""
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from data.omniglot import main, prepare_omniglot
from utility.errors import UserError

REAL_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "omniglot"
REAL_SMALL1 = REAL_DIR / "images_background_small1.zip"
REAL_SMALL2 = REAL_DIR / "images_background_small2.zip"

FAKE_SMALL1 = {"Greek": 2, "Latin": 1}               # alphabet: number of characters
FAKE_SMALL2 = {"Greek": 2, "Tagalog": 2, "Sanskrit": 1}
DRAWINGS = 3                                         # images per character


def png_bytes(tmp_path):
    path = tmp_path / "drawing.png"
    Image.new("1", (8, 8), 1).save(path)
    return path.read_bytes()


def make_fake_zip(tmp_path, set_name, alphabets, extra_entries=()):
    path = tmp_path / f"{set_name}.zip"
    image = png_bytes(tmp_path)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{set_name}/", b"")
        for alphabet, characters in alphabets.items():
            for character in range(1, characters + 1):
                for drawing in range(1, DRAWINGS + 1):
                    archive.writestr(f"{set_name}/{alphabet}/character{character:02d}/{drawing:02d}.png", image)
        for name in extra_entries:
            archive.writestr(name, image)
    return path


def read_list(path):
    with open(path) as handle:
        return [(line.split()[0], int(line.split()[1])) for line in handle]


def check_lists(out_dir, train_list, val_list):
    """Paths exist under out_dir and no alphabet or label is in both lists; return the lists."""
    train, val = read_list(train_list), read_list(val_list)
    for rel_path, _ in train + val:
        assert (Path(out_dir) / rel_path).is_file(), rel_path
    alphabets = [{path.split("/")[1] for path, _ in part} for part in (train, val)]
    assert not alphabets[0] & alphabets[1]
    assert not {label for _, label in train} & {label for _, label in val}
    return train, val


def test_fake_zips_split_by_alphabet(tmp_path, capsys):
    small1 = make_fake_zip(tmp_path, "images_background_small1", FAKE_SMALL1,
                           extra_entries=["__MACOSX/images_background_small1/Greek/character01/._01.png"])
    small2 = make_fake_zip(tmp_path, "images_background_small2", FAKE_SMALL2)
    out_dir = tmp_path / "out"
    data_dir, train_list, val_list = prepare_omniglot(small1, small2, out_dir)

    assert data_dir == str(out_dir)
    train, val = check_lists(out_dir, train_list, val_list)
    assert train[:DRAWINGS + 1] == [(f"images_background_small1/Greek/character01/{d:02d}.png", 0)
                                    for d in range(1, DRAWINGS + 1)] + [
                                   ("images_background_small1/Greek/character02/01.png", 1)]
    assert sorted({label for _, label in train}) == [0, 1, 2]
    assert len(train) == 3 * DRAWINGS
    # Greek is in small1, so only Sanskrit (1 character) and Tagalog (2) are tested, labels after train's
    assert sorted({label for _, label in val}) == [3, 4, 5]
    assert {path.split("/")[1] for path, _ in val} == {"Sanskrit", "Tagalog"}
    assert len(val) == 3 * DRAWINGS
    assert not (out_dir / "images_background_small2" / "Greek").exists()
    assert "left out of val (also in images_background_small1.zip): Greek" in capsys.readouterr().out


def test_unpacked_folders_give_the_same_lists(tmp_path):
    zips = [make_fake_zip(tmp_path, name, alphabets) for name, alphabets in
            (("images_background_small1", FAKE_SMALL1), ("images_background_small2", FAKE_SMALL2))]
    from_zips = prepare_omniglot(*zips, tmp_path / "from_zips")
    for path in zips:
        with zipfile.ZipFile(path) as archive:
            archive.extractall(tmp_path / "unpacked")
    folders = [tmp_path / "unpacked" / path.stem for path in zips]
    from_folders = prepare_omniglot(*folders, tmp_path / "from_folders")

    for zip_list, folder_list in zip(from_zips[1:], from_folders[1:]):
        assert read_list(zip_list) == read_list(folder_list)
    check_lists(*from_folders)


def test_rerun_is_idempotent(tmp_path):
    small1 = make_fake_zip(tmp_path, "images_background_small1", FAKE_SMALL1)
    small2 = make_fake_zip(tmp_path, "images_background_small2", FAKE_SMALL2)
    first = [read_list(path) for path in prepare_omniglot(small1, small2, tmp_path / "out")[1:]]
    second = [read_list(path) for path in prepare_omniglot(small1, small2, tmp_path / "out")[1:]]
    assert first == second


def test_bad_sources_are_user_errors(tmp_path):
    small1 = make_fake_zip(tmp_path, "images_background_small1", FAKE_SMALL1)
    with pytest.raises(UserError, match="not found"):
        prepare_omniglot(small1, tmp_path / "absent.zip", tmp_path / "out")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="neither a zip file nor a folder"):
        prepare_omniglot(tmp_path / "notes.txt", small1, tmp_path / "out")
    empty = make_fake_zip(tmp_path, "empty", {})
    with pytest.raises(UserError, match="no alphabet/character/image.png"):
        prepare_omniglot(empty, small1, tmp_path / "out")
    with pytest.raises(UserError, match="nothing is left to test on"):
        prepare_omniglot(small1, small1, tmp_path / "out")


@pytest.mark.skipif(not REAL_SMALL1.is_file() or not REAL_SMALL2.is_file(),
                    reason=f"the Omniglot zips are not at {REAL_DIR}")
def test_real_zips(tmp_path, capsys):
    out_dir = tmp_path / "omniglot"
    main(["--small1", str(REAL_SMALL1), "--small2", str(REAL_SMALL2), "--out_dir", str(out_dir)])
    train, val = check_lists(out_dir, out_dir / "train.txt", out_dir / "val.txt")

    # small1: Balinese, Early_Aramaic, Greek, Korean, Latin; small2 adds Japanese_(katakana), Sanskrit, Tagalog
    assert len({label for _, label in train}) == 136 and len(train) == 136 * 20
    assert len({label for _, label in val}) == 106 and len(val) == 106 * 20
    assert {path.split("/")[1] for path, _ in val} == {"Japanese_(katakana)", "Sanskrit", "Tagalog"}
    with Image.open(out_dir / train[0][0]) as image:
        assert image.size == (105, 105)
    assert "train: 136 classes, 2720 images" in capsys.readouterr().out
