"""The Milvus backend through milvus-lite: the same top-K as the exact faiss index, changes, reload."""
import os

import numpy as np
import pytest

from evaluation.postprocess import Expansion
from retrieval.gallery import Gallery, ReRanking

DIM = 16


def unit_rows(n, seed):
    x = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make(tmp_path, name, backend):
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    return Gallery.create(str(tmp_path / name), dim=DIM, fingerprint="f" * 16, model_info={}, data_dir=str(data_dir),
                          backend=backend)


@pytest.fixture
def milvus_gallery(tmp_path):
    try:
        gallery = make(tmp_path, "milvus", "milvus")
    except Exception as err:  # noqa: BLE001 - whatever stops milvus-lite here is the skip reason
        pytest.skip(f"milvus-lite cannot start here: {err}")
    yield gallery
    gallery.close()


def top(gallery, queries, k):
    return [[(m.id, m.path, m.label) for m in row] for row in gallery.search(queries, k)]


def test_milvus_lite_gives_the_exact_faiss_top_k(tmp_path, milvus_gallery):
    flat = make(tmp_path, "flat", "faiss")
    features, queries = unit_rows(300, 0), unit_rows(12, 1)
    paths = [os.path.join(flat.data_dir, f"{i}.png") for i in range(300)]
    for gallery in (flat, milvus_gallery):
        assert gallery.add(features, paths, list(range(300))) == list(range(300))
        assert gallery.remove(list(range(0, 300, 3))) == 100
    assert milvus_gallery.stats()["backend"] == "milvus" and milvus_gallery.stats()["items"] == 200
    assert top(milvus_gallery, queries, 10) == top(flat, queries, 10)
    sims = [[m.similarity for m in row] for row in milvus_gallery.search(queries, 10)]
    np.testing.assert_allclose(sims, [[m.similarity for m in row] for row in flat.search(queries, 10)], atol=1e-5)
    expanded = [gallery.search(queries, 10, query_expansion=Expansion(5, 3.0)) for gallery in (milvus_gallery, flat)]
    assert [[m.id for m in row] for row in expanded[0]] == [[m.id for m in row] for row in expanded[1]]
    np.testing.assert_allclose(*[[[m.similarity for m in row] for row in found] for found in expanded], atol=1e-5)
    reranked = [gallery.search(queries, 10, re_ranking=ReRanking(40)) for gallery in (milvus_gallery, flat)]
    assert [[m.id for m in row] for row in reranked[0]] == [[m.id for m in row] for row in reranked[1]]

    milvus_gallery.close()
    reopened = Gallery.open(milvus_gallery.index_dir)  # the vectors stayed in INDEX_DIR/milvus.db
    assert os.path.isdir(os.path.join(reopened.index_dir, "milvus.db"))
    assert reopened.add(unit_rows(1, 2), ["new.png"], [7]) == [300]
    assert reopened.search(unit_rows(1, 2), 1)[0][0].id == 300
    reopened.close()


def test_vectors_of_an_interrupted_add_are_never_found(tmp_path, milvus_gallery, monkeypatch):
    features = unit_rows(20, 0)
    milvus_gallery.add(features[:10], [f"{i}.png" for i in range(10)], [0] * 10)

    def crash(*args, **kwargs):
        raise OSError("killed")

    with monkeypatch.context() as patch:
        patch.setattr("retrieval.gallery._write_json_atomically", crash)
        with pytest.raises(OSError):
            milvus_gallery.add(features[10:], [f"{i}.png" for i in range(10, 20)], [0] * 10)
    milvus_gallery.close()
    reopened = Gallery.open(milvus_gallery.index_dir)
    assert {m.id for m in reopened.search(features[10:], 5)[0]} <= set(range(10))  # in Milvus, in no table
    assert reopened.add(features[10:11], ["x.png"], [0]) == [10]  # and the next add replaces them
    assert reopened._state.index.count == 11
    reopened.close()


def test_index_py_builds_a_milvus_gallery_with_the_same_results(tiny_export, tmp_path):
    import index

    built = {}
    for backend in ("faiss", "milvus"):
        try:
            index.main(["build", "--model_dir", tiny_export["model_dir"], "--features", tiny_export["dump_dir"],
                        "--data_dir", tiny_export["data_dir"], "--index_dir", str(tmp_path / backend),
                        "--backend", backend])
        except Exception as err:  # noqa: BLE001 - whatever stops milvus-lite here is the skip reason
            pytest.skip(f"milvus-lite cannot start here: {err}")
        built[backend] = Gallery.open(str(tmp_path / backend))
    queries = np.load(os.path.join(tiny_export["dump_dir"], "features.npy"))[:8]
    assert built["milvus"].stats()["index_type"] == "FLAT" and len(built["milvus"]) == 24
    assert top(built["milvus"], queries, 5) == top(built["faiss"], queries, 5)
    built["milvus"].close()
