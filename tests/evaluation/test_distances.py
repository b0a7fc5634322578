"""evaluation.distances: exact nearest neighbours and squared distances against brute force."""
import numpy as np
import pytest

from embedding_references import brute_force_neighbors
from evaluation.distances import nearest_neighbors, squared_distance_fn


# --- nearest neighbours -------------------------------------------------------------

@pytest.mark.parametrize("feat_norm", [True, False])
@pytest.mark.parametrize("size,block_rows", [(40, 7), (257, 64), (300, None)])
def test_neighbors_match_brute_force_leave_one_out(size, block_rows, feat_norm):
    rng = np.random.default_rng(size)
    x = (rng.standard_normal((size, 16)) * rng.uniform(0.5, 3, (size, 1))).astype(np.float32)
    k = 10
    indices, distances = nearest_neighbors(x, x, k, exclude_self=True, feat_norm=feat_norm, block_rows=block_rows)
    expected_order, expected_distances = brute_force_neighbors(x, x, True, feat_norm)
    np.testing.assert_allclose(distances, expected_distances[:, :k], rtol=1e-5, atol=1e-5)
    # Indices must agree wherever float32 rounding cannot swap two neighbours.
    gaps = np.diff(expected_distances[:, :k + 1], axis=1)
    clear = np.ones((size, k), bool)
    clear[:, 1:] &= gaps[:, :k - 1] > 1e-4
    clear &= gaps[:, :k] > 1e-4
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(indices[clear], expected_order[:, :k][clear])
    assert not np.any(indices == np.arange(size)[:, None])


@pytest.mark.parametrize("block_rows", [3, None])
def test_ties_go_to_the_smaller_gallery_index_exactly(block_rows):
    # Small-integer vectors: every raw Euclidean score is exact in float32, so
    # the brute-force order (stable argsort) must be reproduced exactly, ties included.
    rng = np.random.default_rng(1)
    x = rng.integers(-1, 2, (60, 4)).astype(np.float32)
    query = rng.integers(-1, 2, (25, 4)).astype(np.float32)
    indices, distances = nearest_neighbors(query, x, 12, feat_norm=False, block_rows=block_rows)
    expected_order, expected_distances = brute_force_neighbors(query, x, False, False)
    np.testing.assert_array_equal(indices, expected_order[:, :12])
    np.testing.assert_array_equal(distances, expected_distances[:, :12])


def test_ties_with_cosine_ranking_and_duplicates():
    # Three copies of e0, two of e1: scores are exactly 1 or 0.
    gallery = np.eye(3, dtype=np.float32)[[0, 1, 0, 2, 1, 0]]
    query = np.array([[2, 0, 0], [0, 0, 5]], np.float32)
    indices, distances = nearest_neighbors(query, gallery, 4)
    np.testing.assert_array_equal(indices, [[0, 2, 5, 1], [3, 0, 1, 2]])
    np.testing.assert_allclose(distances, [[0, 0, 0, 2], [0, 2, 2, 2]])
    # Leave-one-out: row 2's own copy is skipped, its duplicates come first by index.
    indices, _ = nearest_neighbors(gallery, gallery, 3, exclude_self=True)
    np.testing.assert_array_equal(indices[2], [0, 5, 1])
    # With k=1, copies 0 and 2 fill the k + 1 searched before row 5 itself appears.
    indices, _ = nearest_neighbors(gallery, gallery, 1, exclude_self=True)
    np.testing.assert_array_equal(indices[:, 0], [2, 4, 0, 0, 1, 0])


def test_neighbors_reject_k_beyond_the_gallery():
    x = np.eye(4, dtype=np.float32)
    nearest_neighbors(x, x, 3, exclude_self=True)
    with pytest.raises(ValueError, match="between 1 and 3"):
        nearest_neighbors(x, x, 4, exclude_self=True)
    with pytest.raises(ValueError, match="NaN"):
        nearest_neighbors(np.full((2, 4), np.nan), x, 1)


def test_squared_distance_fn():
    rng = np.random.default_rng(1)
    query, gallery = rng.normal(size=(5, 4)), rng.normal(size=(7, 4))
    expected = ((query[:, None] - gallery[None]) ** 2).sum(-1)
    assert np.allclose(squared_distance_fn(query, gallery, feat_norm=False)(1, 4), expected[1:4], atol=1e-5)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    expected = ((unit(query)[:, None] - unit(gallery)[None]) ** 2).sum(-1)
    assert np.allclose(squared_distance_fn(query, gallery)(0, 5), expected, atol=1e-5)
