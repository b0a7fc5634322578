"""data/market1501.py and data/dukemtmc.py on fake data-set trees with the real naming schemes."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from data import dukemtmc, market1501
from data.reid_lists import DUKEMTMC, MARKET1501, parse_name, prepare
from evaluation.reid import reid_metrics
from reader import read_image_list
from utility.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (folder, file name): three people in train, two in query/gallery, junk and distractors in the gallery.
MARKET_FILES = [
    ("bounding_box_train", "0002_c1s1_000451_03.jpg"),
    ("bounding_box_train", "0002_c2s1_000301_01.jpg"),
    ("bounding_box_train", "0007_c3s3_015128_01.jpg"),
    ("bounding_box_train", "0007_c6s1_028826_02.jpg"),
    ("bounding_box_train", "1500_c6s3_086567_01.jpg"),
    ("query", "0001_c1s1_001051_00.jpg"),
    ("query", "0001_c5s1_001426_00.jpg"),
    ("query", "0003_c2s1_000151_00.jpg"),
    ("bounding_box_test", "0001_c1s1_001101_02.jpg"),   # same camera as the first query: junk for it
    ("bounding_box_test", "0001_c2s1_000976_01.jpg"),
    ("bounding_box_test", "0001_c4s6_011176_03.jpg"),
    ("bounding_box_test", "0003_c2s1_000176_04.jpg"),   # same camera as its query
    ("bounding_box_test", "0003_c3s1_000551_01.jpg"),
    ("bounding_box_test", "0000_c1s1_000151_01.jpg"),   # distractors
    ("bounding_box_test", "0000_c6s4_001877_05.jpg"),
    ("bounding_box_test", "-1_c1s1_000401_03.jpg"),     # junk
    ("bounding_box_test", "-1_c3s2_012345_02.jpg"),
    ("bounding_box_test", "-1_c5s1_000401_01.jpg"),
]
DUKE_FILES = [
    ("bounding_box_train", "0005_c2_f0046985.jpg"),
    ("bounding_box_train", "0005_c5_f0051781.jpg"),
    ("bounding_box_train", "0008_c8_f0005512.jpg"),
    ("query", "0001_c2_f0046182.jpg"),
    ("query", "0001_c5_f0051341.jpg"),
    ("bounding_box_test", "0001_c2_f0046302.jpg"),
    ("bounding_box_test", "0001_c6_f0061362.jpg"),
    ("bounding_box_test", "0019_c7_f0101066.jpg"),  # a distractor identity: seen by one camera only
    ("bounding_box_test", "0019_c7_f0101186.jpg"),
]


def make_tree(root, files, extras=True):
    """Tiny JPEGs (8 x 4) under root, plus the kind of clutter real downloads hold."""
    for k, (folder, name) in enumerate(files):
        os.makedirs(root / folder, exist_ok=True)
        colour = ((k * 37) % 256, (k * 91) % 256, (k * 53) % 256)
        Image.new("RGB", (4, 8), colour).save(root / folder / name, format="JPEG")
    if extras:
        (root / "bounding_box_test" / "Thumbs.db").write_bytes(b"windows thumbnails")
        (root / "readme.txt").write_text("not an image")
    return root


def read(path):
    with open(path, encoding="utf-8") as handle:
        return [line.split() for line in handle.read().splitlines()]


def test_market_names_parse():
    assert parse_name(MARKET1501, "0002_c1s1_000451_03.jpg") == (2, 1)
    assert parse_name(MARKET1501, "-1_c3s2_012345_02.jpg") == (-1, 3)
    assert parse_name(MARKET1501, "0000_c6s4_001877_05.jpg") == (0, 6)
    assert parse_name(MARKET1501, "0005_c2_f0046985.jpg") is None
    assert parse_name(DUKEMTMC, "0005_c2_f0046985.jpg") == (5, 2)
    assert parse_name(DUKEMTMC, "0002_c1s1_000451_03.jpg") is None


def test_market_lists(tmp_path, capsys):
    root = make_tree(tmp_path / "Market-1501-v15.09.15", MARKET_FILES)
    written = market1501.main(["--dataset_dir", str(root), "--out_dir", str(tmp_path / "lists")])
    assert sorted(os.listdir(tmp_path / "lists")) == ["gallery.txt", "query.txt", "train.txt"]
    assert read(written["train"]) == [
        ["bounding_box_train/0002_c1s1_000451_03.jpg", "2", "1"],
        ["bounding_box_train/0002_c2s1_000301_01.jpg", "2", "2"],
        ["bounding_box_train/0007_c3s3_015128_01.jpg", "7", "3"],
        ["bounding_box_train/0007_c6s1_028826_02.jpg", "7", "6"],
        ["bounding_box_train/1500_c6s3_086567_01.jpg", "1500", "6"],
    ]
    assert [line[1:] for line in read(written["query"])] == [["1", "1"], ["1", "5"], ["3", "2"]]
    gallery = read(written["gallery"])
    assert len(gallery) == 7 and all(person != "-1" for _, person, _ in gallery)
    assert ["bounding_box_test/0000_c1s1_000151_01.jpg", "0", "1"] in gallery
    out = capsys.readouterr().out
    assert "gallery: 7 images, 2 identities, 5 cameras (2 distractors (0000) kept, 3 junk (-1) left out)" in out
    assert "train: 5 images, 3 identities, 4 cameras ->" in out
    assert f"--data_dir {root}" in out


def test_market_lists_feed_the_reader_and_the_metric(tmp_path):
    root = make_tree(tmp_path / "market", MARKET_FILES)
    written = prepare(root, tmp_path / "lists", MARKET1501)
    query = read_image_list(written["query"], str(root), with_camera=True)
    gallery = read_image_list(written["gallery"], str(root), with_camera=True)
    assert query.labels.tolist() == [1, 1, 3] and query.cameras.tolist() == [1, 5, 2]
    # Gallery in name order: 0000 c1, 0000 c6, 0001 c1, 0001 c2, 0001 c4, 0003 c2, 0003 c3.
    assert gallery.labels.tolist() == [0, 0, 1, 1, 1, 3, 3] and gallery.cameras.tolist() == [1, 6, 1, 2, 4, 2, 3]
    # One-hot embeddings; each query sits on one gallery image, all the others tie (ranked in list order).
    gallery_features = np.eye(len(gallery))
    query_features = gallery_features[[2, 2, 5]]
    results = reid_metrics(query_features, query.labels, query.cameras,
                           gallery_features, gallery.labels, gallery.cameras, feat_norm=False)
    # Query 1 sits on its same-camera twin (junk): distractors first, matches at ranks 3 and 4.
    # Query 2 (camera 5) may match that camera-1 image: ranks 1, 4, 5. Query 3: its one match at rank 6.
    expected_ap = [(1 / 3 + 2 / 4) / 2, (1 + 2 / 4 + 3 / 5) / 3, 1 / 6]
    assert results["map"] == pytest.approx(np.mean(expected_ap))
    assert (results["cmc@1"], results["cmc@5"], results["cmc@10"]) == pytest.approx((1 / 3, 2 / 3, 1))


def test_duke_lists(tmp_path, capsys):
    root = make_tree(tmp_path / "DukeMTMC-reID", DUKE_FILES)
    written = dukemtmc.main(["--dataset_dir", str(root), "--out_dir", str(tmp_path / "duke")])
    assert read(written["train"])[2] == ["bounding_box_train/0008_c8_f0005512.jpg", "8", "8"]
    assert read(written["query"]) == [["query/0001_c2_f0046182.jpg", "1", "2"],
                                      ["query/0001_c5_f0051341.jpg", "1", "5"]]
    assert len(read(written["gallery"])) == 4
    assert "gallery: 4 images, 2 identities, 3 cameras ->" in capsys.readouterr().out


def test_the_script_runs_as_a_command(tmp_path):
    root = make_tree(tmp_path / "duke", DUKE_FILES)
    done = subprocess.run([sys.executable, os.path.join(REPO, "data", "dukemtmc.py"), "--dataset_dir", str(root),
                           "--out_dir", str(tmp_path / "lists")], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "lists" / "query.txt").is_file()
    # Market names in a Duke folder: one error line, exit status 2.
    market_root = make_tree(tmp_path / "market", MARKET_FILES)
    done = subprocess.run([sys.executable, os.path.join(REPO, "data", "dukemtmc.py"), "--dataset_dir",
                           str(market_root), "--out_dir", str(tmp_path / "x")], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")
    assert "do not follow the DukeMTMC-reID scheme" in done.stderr


def test_missing_folder(tmp_path):
    root = make_tree(tmp_path / "market", [f for f in MARKET_FILES if f[0] != "query"])
    with pytest.raises(UserError, match=r"query not found: expected the Market-1501 folders"):
        prepare(root, tmp_path / "lists", MARKET1501)
    with pytest.raises(UserError, match="Market-1501 folder .* not found"):
        prepare(tmp_path / "nowhere", tmp_path / "lists", MARKET1501)


def test_unexpected_names_and_cameras(tmp_path):
    root = make_tree(tmp_path / "market", MARKET_FILES)
    Image.new("RGB", (4, 8)).save(root / "query" / "0004_c7s1_000151_00.jpg", format="JPEG")  # camera 7
    Image.new("RGB", (4, 8)).save(root / "query" / "person.jpg", format="JPEG")
    with pytest.raises(UserError) as info:
        prepare(root, tmp_path / "lists", MARKET1501)
    message = str(info.value)
    assert "2 image name(s) do not follow the Market-1501 scheme" in message
    assert "0004_c7s1_000151_00.jpg" in message and "person.jpg" in message
    assert not (tmp_path / "lists" / "train.txt").exists()


def test_empty_folder(tmp_path):
    root = make_tree(tmp_path / "duke", DUKE_FILES)
    for name in os.listdir(root / "query"):
        os.remove(root / "query" / name)
    with pytest.raises(UserError, match="holds no DukeMTMC-reID images"):
        prepare(root, tmp_path / "lists", DUKEMTMC)
