"""retrieval.query.QueryEmbedder: the exported model's own preprocessing, normalised, finite or refused."""
import os

import numpy as np
import pytest

from reader.decode import load_rgb
from retrieval.query import QueryEmbedder
from utility.errors import UserError


@pytest.fixture(scope="module")
def embedder(tiny_export):
    return QueryEmbedder(tiny_export["model_dir"])


def test_queries_are_embedded_as_infer_py_embeds_the_gallery(tiny_export, embedder):
    with open(os.path.join(tiny_export["dump_dir"], "paths.txt")) as f:
        paths = f.read().splitlines()[:5]
    dump = np.load(os.path.join(tiny_export["dump_dir"], "features.npy"))[:5]
    dump /= np.linalg.norm(dump, axis=1, keepdims=True)
    from_files = embedder.embed_files(paths)
    np.testing.assert_allclose(from_files, dump, atol=1e-4)
    np.testing.assert_allclose(embedder.embed_images([load_rgb(p) for p in paths]), from_files, atol=1e-6)
    assert embedder.embed_images([]).shape == (0, 16)


def test_non_finite_embeddings_and_wrong_arrays_are_refused(embedder, monkeypatch):
    with pytest.raises(UserError, match="HxWx3 uint8 RGB"):
        embedder.embed_images([np.zeros((20, 30), np.uint8)])
    monkeypatch.setattr(embedder._embedder, "embed",
                        lambda batch: (np.full((len(batch), 16), np.nan, np.float32), None))
    with pytest.raises(UserError, match="1 non-finite or zero embedding"):
        embedder.embed_images([np.zeros((20, 30, 3), np.uint8)])
