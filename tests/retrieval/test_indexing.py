"""retrieval.indexing from Python: build, add, remove and info without the command line; the gallery sources."""
import os

import numpy as np
import pytest

from engine.dump import dump_fingerprint, read_dump
from retrieval.gallery import Gallery
from retrieval.indexing import GalleryImages, add_images, build_index, folder_images, index_info, remove_items
from utility.errors import UserError


def test_build_add_remove_from_python(tiny_export, tmp_path, capsys):
    with open(tiny_export["val_list"]) as f:
        lines = f.readlines()
    (tmp_path / "first.txt").write_text("".join(lines[:18]))
    (tmp_path / "all.txt").write_text("".join(lines))
    index_dir = str(tmp_path / "gallery")
    first = GalleryImages(gallery_list=str(tmp_path / "first.txt"), data_dir=tiny_export["data_dir"], num_workers=0)
    stats = build_index(index_dir, first, tiny_export["model_dir"])
    assert (stats["items"], stats["dim"], stats["index_type"]) == (18, 16, "Flat")

    everything = GalleryImages(gallery_list=str(tmp_path / "all.txt"), data_dir=tiny_export["data_dir"],
                               num_workers=0)
    ids, total = add_images(index_dir, everything)
    assert ids == list(range(18, 24)) and total == 24
    assert "6 new images (18 already in the gallery)" in capsys.readouterr().out

    # the same embeddings as infer.py's dump of the list
    dump = np.load(os.path.join(tiny_export["dump_dir"], "features.npy"))
    dump /= np.linalg.norm(dump, axis=1, keepdims=True)
    best = Gallery.open(index_dir).search(dump, 1)
    assert [row[0].id for row in best] == list(range(24))
    assert [row[0].similarity for row in best] == pytest.approx([1.0] * 24, abs=1e-4)

    gone = os.path.join(tiny_export["data_dir"], lines[0].split()[0])
    assert remove_items(index_dir, ids=[1, 999], paths=[gone]) == (2, 22)
    assert index_info(index_dir)["items"] == 22


def test_new_images_that_are_all_unreadable_add_nothing_when_skipped(tiny_export, tmp_path, capsys):
    with open(tiny_export["val_list"]) as f:
        lines = f.readlines()
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "first.txt").write_text("".join(lines[:6]))
    (tmp_path / "more.txt").write_text("".join(lines[:6]) + f"{tmp_path / 'broken.png'} 101\n")
    index_dir = str(tmp_path / "gallery")
    build_index(index_dir, GalleryImages(gallery_list=str(tmp_path / "first.txt"), data_dir=tiny_export["data_dir"],
                                         num_workers=0), tiny_export["model_dir"])
    more = {"gallery_list": str(tmp_path / "more.txt"), "data_dir": tiny_export["data_dir"], "num_workers": 0}
    with pytest.raises(UserError, match="cannot read 1 image"):
        add_images(index_dir, GalleryImages(**more))
    assert add_images(index_dir, GalleryImages(**more, skip_bad_images=True)) == ([], 6)
    assert "skipping unreadable image" in capsys.readouterr().err
    only_broken = tmp_path / "only_broken.txt"
    only_broken.write_text(f"{tmp_path / 'broken.png'} 101\n")
    with pytest.raises(UserError, match="no image of the gallery could be embedded"):  # a new index needs one
        build_index(str(tmp_path / "other"), GalleryImages(gallery_list=str(only_broken), data_dir="",
                                                           num_workers=0, skip_bad_images=True),
                    tiny_export["model_dir"])


def test_an_index_keeps_its_onnx_model_and_searches_without_importing_paddle(tiny_export, tmp_path):
    import subprocess
    import sys

    from engine import onnx_export
    from engine.device import cuda_wheel_installed
    from engine.embedder import Embedder, model_fingerprint

    index_dir = tmp_path / "gallery"
    build_index(str(index_dir), GalleryImages(gallery_list=tiny_export["val_list"], data_dir=tiny_export["data_dir"],
                                              num_workers=0), tiny_export["model_dir"])
    model_dir = str(index_dir / "model")
    kept = os.path.join(model_dir, onnx_export.BESIDE_EXPORT)
    assert onnx_export.read_onnx_info(kept)["fingerprint"] == model_fingerprint(model_dir)
    assert onnx_export.onnx_of_export(model_dir, model_fingerprint(model_dir)) == kept
    images = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype("float32")
    np.save(tmp_path / "images.npy", images)
    script = ("import sys, numpy as np; from engine.embedder import Embedder; "
              f"features = Embedder({model_dir!r})(np.load({str(tmp_path / 'images.npy')!r})); "
              f"np.save({str(tmp_path / 'kept.npy')!r}, features); print('paddle' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert done.returncode == 0, done.stderr
    if not cuda_wheel_installed():  # on the CPU the kept ONNX model needs no Paddle
        assert done.stdout.strip().splitlines()[-1] == "False"
    converted = Embedder(tiny_export["model_dir"], engine="onnxruntime")(images)  # no kept copy there
    np.testing.assert_array_equal(np.load(tmp_path / "kept.npy"), converted)
    # A kept model of other parameters is not used: the export is converted again.
    info_path = onnx_export.description_path(kept)
    with open(info_path) as f:
        stale = f.read().replace(model_fingerprint(model_dir), "0123456789abcdef")
    with open(info_path, "w") as f:
        f.write(stale)
    assert isinstance(onnx_export.onnx_of_export(model_dir, model_fingerprint(model_dir)), bytes)
    # An index without the copy (built before indexes kept one) gets it at its next add.
    os.remove(kept)
    add_images(str(index_dir), GalleryImages(gallery_list=tiny_export["val_list"], data_dir=tiny_export["data_dir"],
                                             num_workers=0))
    assert onnx_export.onnx_of_export(model_dir, model_fingerprint(model_dir)) == kept


def test_one_source_and_one_model(tiny_export, tmp_path):
    with pytest.raises(UserError, match="one of --gallery_dir, --gallery_list or --features"):
        build_index(str(tmp_path / "g"), GalleryImages(), tiny_export["model_dir"])
    with pytest.raises(UserError, match="one of"):
        GalleryImages(gallery_dir="photos", features="dump").source()
    with pytest.raises(UserError, match="model_dir .* or write_model"):
        build_index(str(tmp_path / "g"), GalleryImages(features=tiny_export["dump_dir"]))
    assert not os.path.exists(tmp_path / "g")


def test_write_model_is_given_the_folder_inside_the_new_index(tiny_export, tmp_path):
    """index.py exports a checkpoint this way; here the writer copies an export."""
    import shutil

    written = []

    def write_model(out_dir):
        written.append(out_dir)
        shutil.copytree(tiny_export["model_dir"], out_dir)

    index_dir = tmp_path / "gallery"
    build_index(str(index_dir), GalleryImages(features=tiny_export["dump_dir"]), write_model=write_model)
    assert os.path.basename(written[0]) == "model" and not os.path.exists(written[0])  # moved into place
    assert Gallery.open(str(index_dir)).model_dir == str(index_dir / "model")


def test_folder_images_label_by_subfolder(tiny_photos):
    paths, labels = folder_images(tiny_photos)
    assert len(paths) == 24 and sorted(set(labels)) == ["class101", "class102", "class103", "class104"]
    assert all(os.path.basename(os.path.dirname(p)) == label for p, label in zip(paths, labels))


def test_read_dump_checks_the_model_and_finds_the_data_dir(tiny_export, tmp_path):
    fingerprint = dump_fingerprint(tiny_export["dump_dir"])
    features, paths, labels, data_dir, sigma2 = read_dump(tiny_export["dump_dir"], "", fingerprint, 16)
    assert sigma2 is None  # the model predicts no uncertainty
    assert features.shape == (24, 16) and len(paths) == len(labels) == 24
    assert data_dir == os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    with pytest.raises(UserError, match=r"fingerprint .* \(16-d\).*is 0123456789abcdef \(16-d\)"):
        read_dump(tiny_export["dump_dir"], "", "0123456789abcdef", 16)
    with pytest.raises(UserError, match="not a complete infer.py dump"):
        read_dump(str(tmp_path), "", fingerprint, 16)


def test_a_dump_of_a_model_without_embedding_layer_builds_an_index(tiny_export, tmp_path, monkeypatch):
    """--embedding_size 0 (the pooled feature) records no width: the dump's own, pinned by the fingerprint."""
    import retrieval.indexing as indexing

    identity = indexing.model_identity

    def without_embedding_size(model_dir):
        fingerprint, info = identity(model_dir)
        return fingerprint, {**info, "embedding_size": 0}

    monkeypatch.setattr(indexing, "model_identity", without_embedding_size)
    stats = build_index(str(tmp_path / "g"), GalleryImages(features=tiny_export["dump_dir"]), tiny_export["model_dir"])
    assert (stats["items"], stats["dim"]) == (24, 16)
    with pytest.raises(UserError, match=r"fingerprint .* \(16-d\).*is 0123456789abcdef: another model"):
        read_dump(tiny_export["dump_dir"], "", "0123456789abcdef", None)
