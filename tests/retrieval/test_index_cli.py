"""index.py build|add|remove|info and search.py end to end on a tiny trained model."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import index
import search
from retrieval.gallery import Gallery
from utility.errors import UserError


def test_a_gallery_straight_from_imagenet_weights_without_training(tiny_photos, tmp_path, capsys):
    from imagenet_files import pooled_features, random_resnet, torchvision_state, write_pth

    from engine.embedder import Embedder

    net = random_resnet(np.random.default_rng(0))
    weights = write_pth(tmp_path / "resnet18.pth", torchvision_state(net))
    gallery_dir = str(tmp_path / "gallery")
    index.main(["build", "--pretrained_model", str(weights), "--gallery_dir", tiny_photos, "--index_dir", gallery_dir,
                "--num_workers", "0", "--model=ResNet18", "--image_shape=3,32,32"])
    assert "Built " + gallery_dir + ": 24 items, 512-d, faiss Flat" in capsys.readouterr().out
    images = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    expected = pooled_features(net, images)  # the weights' own features, in numpy
    got = Embedder(os.path.join(gallery_dir, "model"))(images)
    assert np.abs(got - expected).max() / np.abs(expected).max() <= 1e-4


def test_newcomer_flow_checkpoint_and_photo_folder(tiny_checkpoint, tiny_photos, tmp_path, capsys):
    gallery_dir = str(tmp_path / "gallery")
    index.main(["build", "--pretrained_model", tiny_checkpoint["checkpoint"], "--gallery_dir", tiny_photos,
                "--index_dir", gallery_dir, "--num_workers", "0", "--model=ResNet18"])  # an infer.py flag passes
    assert "Built " + gallery_dir + ": 24 items, 16-d, faiss Flat" in capsys.readouterr().out
    photo = os.path.join(tiny_photos, "class102", "3.png")
    search.main(["--index_dir", gallery_dir, "--query", photo, "--top_k", "5", "--output", str(tmp_path / "r.jsonl"),
                 "--picture", str(tmp_path / "r.png")])
    out = capsys.readouterr().out
    first = out.splitlines()[1].split()
    assert out.startswith(f"Query {photo}:") and first[0] == "1" and float(first[1]) == pytest.approx(1, abs=1e-4)
    assert first[2:] == [os.path.join("class102", "3.png"), "label", "class102"]
    record = json.loads((tmp_path / "r.jsonl").read_text())
    assert record["query"] == photo and [m["rank"] for m in record["matches"]] == [1, 2, 3, 4, 5]
    assert os.path.getsize(tmp_path / "r.png") > 0
    gallery = Gallery.open(gallery_dir)
    assert sorted(os.listdir(gallery.model_dir)) == ["inference.json", "inference.onnx", "inference.pdiparams",
                                                    "inference.preprocess.json", "preprocess.json"]
    assert gallery.data_dir == os.path.abspath(tiny_photos)


def test_the_cli_gives_exact_search_on_infer_dumps(tiny_export, tmp_path, capsys):
    """search.py's results are the brute-force cosine neighbours of infer.py's features."""
    gallery_dir = str(tmp_path / "gallery")
    index.main(["build", "--model_dir", tiny_export["model_dir"], "--gallery_list", tiny_export["val_list"],
                "--data_dir", tiny_export["data_dir"], "--index_dir", gallery_dir, "--num_workers", "0"])
    search.main(["--index_dir", gallery_dir, "--query_list", tiny_export["val_list"], "--data_dir",
                 tiny_export["data_dir"], "--top_k", "5", "--output", str(tmp_path / "r.jsonl")])
    features = np.load(os.path.join(tiny_export["dump_dir"], "features.npy"))
    with open(os.path.join(tiny_export["dump_dir"], "paths.txt")) as f:
        paths = f.read().splitlines()
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    sims = features @ features.T
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert len(records) == len(paths) == 24
    relative = [os.path.relpath(p, tiny_export["data_dir"]) for p in paths]
    for row, record in enumerate(records):
        got = [relative.index(m["path"]) for m in record["matches"]]
        want = np.argsort(-sims[row], kind="stable")[:5]
        np.testing.assert_allclose([m["similarity"] for m in record["matches"]], sims[row, want], atol=1e-4)
        assert sims[row, got] == pytest.approx(sims[row, want], abs=1e-4)  # same neighbours (ties in any order)
        assert record["label"] == int(record["matches"][0]["label"])

    # --features indexes infer.py's dump without embedding again: the same search results.
    from_dump = str(tmp_path / "from_dump")
    index.main(["build", "--model_dir", tiny_export["model_dir"], "--features", tiny_export["dump_dir"],
                "--data_dir", tiny_export["data_dir"], "--index_dir", from_dump])
    queries = features[:6]
    assert ([[(m.path, m.label) for m in row] for row in Gallery.open(from_dump).search(queries, 5)]
            == [[(m.path, m.label) for m in row] for row in Gallery.open(gallery_dir).search(queries, 5)])


def test_add_embeds_only_new_images_then_remove_and_info(tiny_export, tiny_photos, tmp_path, capsys):
    photos = tmp_path / "photos"
    shutil.copytree(tiny_photos, photos)
    held_back = photos / "class104"
    shutil.move(held_back, tmp_path / "later")
    gallery_dir = str(tmp_path / "gallery")
    index.main(["build", "--model_dir", tiny_export["model_dir"], "--gallery_dir", str(photos), "--index_dir",
                gallery_dir, "--num_workers", "0"])
    shutil.move(tmp_path / "later", held_back)
    capsys.readouterr()
    index.main(["add", "--index_dir", gallery_dir, "--gallery_dir", str(photos), "--num_workers", "0"])
    out = capsys.readouterr().out
    assert "6 new images (18 already in the gallery)" in out and "Added 6 items" in out and "24 items now" in out
    gallery = Gallery.open(gallery_dir)
    assert sorted(gallery.item(i).label for i in range(18, 24)) == ["class104"] * 6

    index.main(["remove", "--index_dir", gallery_dir, "--ids", "0,1,999"])
    assert "Removed 2 items" in capsys.readouterr().out
    (tmp_path / "gone.txt").write_text("class104/0.png\nclass104/1.png\n")
    index.main(["remove", "--index_dir", gallery_dir, "--list", str(tmp_path / "gone.txt"), "--data_dir",
                str(photos)])
    assert "Removed 2 items" in capsys.readouterr().out
    index.main(["info", "--index_dir", gallery_dir])
    stats = json.loads(capsys.readouterr().out)
    assert stats["items"] == 20 and stats["dim"] == 16 and stats["index_type"] == "Flat"
    assert stats["fingerprint"] == Gallery.open(gallery_dir).fingerprint


def test_a_dump_of_another_model_is_refused_naming_both(tiny_export, tmp_path):
    gallery_dir = str(tmp_path / "gallery")
    index.main(["build", "--model_dir", tiny_export["model_dir"], "--features", tiny_export["dump_dir"],
                "--index_dir", gallery_dir])
    fingerprint = Gallery.open(gallery_dir).fingerprint
    other = tmp_path / "other_dump"
    shutil.copytree(tiny_export["dump_dir"], other)
    (other / "fingerprint.json").write_text(json.dumps({"fingerprint": "0123456789abcdef", "embedding_size": 16}))
    with pytest.raises(UserError, match=f"fingerprint 0123456789abcdef \\(16-d\\).*is {fingerprint} \\(16-d\\)"):
        index.main(["add", "--index_dir", gallery_dir, "--features", str(other)])
    np.save(other / "features.npy", np.ones((24, 8), np.float32))
    with pytest.raises(UserError, match=r"\(8-d\).*\(16-d\)"):
        index.main(["build", "--model_dir", tiny_export["model_dir"], "--features", str(other), "--index_dir",
                    str(tmp_path / "new")])
    assert not os.path.exists(tmp_path / "new") and not any(p.name.startswith(".new") for p in tmp_path.iterdir())


def test_build_never_leaves_a_half_index(tiny_export, tmp_path, monkeypatch):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "something").write_text("mine")
    with pytest.raises(UserError, match="exists and is not empty"):
        index.main(["build", "--model_dir", tiny_export["model_dir"], "--features", tiny_export["dump_dir"],
                    "--index_dir", str(taken)])

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Gallery, "add", crash)
    with pytest.raises(OSError):
        index.main(["build", "--model_dir", tiny_export["model_dir"], "--features", tiny_export["dump_dir"],
                    "--index_dir", str(tmp_path / "gallery")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_scripts_report_bad_input_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "search.py", "--index_dir", str(tmp_path / "none"), "--query", "x.png"],
                            check=False, capture_output=True, text=True, cwd=os.path.dirname(os.path.abspath(index.__file__)))
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: index folder not found: {tmp_path / 'none'} (python index.py build writes one)"]


def test_an_uncertainty_models_index_keeps_the_sigma2_infer_dumps(uncertain_index, tmp_path):
    dump = uncertain_index["dump_dir"]
    with open(os.path.join(dump, "paths.txt")) as f:
        paths = f.read().splitlines()
    dumped = dict(zip(map(os.path.realpath, paths), np.load(os.path.join(dump, "uncertainty.npy")).tolist()))
    gallery = Gallery.open(uncertain_index["index_dir"])
    stored = {os.path.realpath(gallery.image_path(i)): gallery.item(i).sigma2 for i in gallery.ids()}
    assert stored.keys() == dumped.keys() and len(set(dumped.values())) > 1  # sigma^2 differs between images
    np.testing.assert_allclose([stored[p] for p in dumped], list(dumped.values()), rtol=1e-5)
    from_dump = str(tmp_path / "from_dump")
    index.main(["build", f"--model_dir={gallery.model_dir}", f"--features={dump}",
                f"--data_dir={uncertain_index['data_dir']}", f"--index_dir={from_dump}"])
    rebuilt = Gallery.open(from_dump)
    assert {os.path.realpath(rebuilt.image_path(i)): rebuilt.item(i).sigma2 for i in rebuilt.ids()} == dumped
