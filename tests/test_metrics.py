"""evaluation.metrics against hand-computed cases and brute-force references."""
import math
import warnings

import numpy as np
import pytest

from evaluation.metrics import evaluate, map_at_r, most_confused_pairs, nearest_neighbors, nmi, r_precision, recall_at_k


def brute_force_neighbors(query, gallery, exclude_self, feat_norm):
    """Full float64 distance matrix, stable argsort: ties go to the smaller gallery index."""
    query, gallery = query.astype(np.float64), gallery.astype(np.float64)
    if feat_norm:
        query = query / np.linalg.norm(query, axis=1, keepdims=True)
        gallery = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    distances = ((query[:, None, :] - gallery[None, :, :]) ** 2).sum(axis=2)
    if exclude_self:
        np.fill_diagonal(distances, np.inf)
    order = np.argsort(distances, axis=1, kind="stable")
    return order, np.take_along_axis(distances, order, axis=1)


def map_at_r_from_definition(query_labels, ranked_gallery_labels):
    """Musgrave et al. 2020, one query at a time: AP@R = 1/R * sum_{i<=R} P(i) * rel(i)."""
    scores = []
    for label, ranked in zip(query_labels, ranked_gallery_labels):
        r = int(np.sum(ranked == label))
        if r == 0:
            continue
        relevant_seen, total = 0, 0.0
        for i in range(1, r + 1):
            if ranked[i - 1] == label:
                relevant_seen += 1
                total += relevant_seen / i
        scores.append(total / r)
    return float(np.mean(scores))


def clustered(rng, num_classes, per_class, dim, spread):
    centers = rng.standard_normal((num_classes, dim))
    labels = np.repeat(np.arange(num_classes), per_class)
    features = centers[labels] + spread * rng.standard_normal((len(labels), dim))
    return features.astype(np.float32), labels


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


# --- metrics on hand-computed cases ------------------------------------------------

# Points on a line (feat_norm=False): 0, 1, 3, 10, 11, 30 with labels a a b a b c.
LINE = np.array([[0], [1], [3], [10], [11], [30]], np.float32)
LINE_LABELS = np.array(["a", "a", "b", "a", "b", "c"])


def test_evaluate_by_hand_leave_one_out():
    # Neighbours (nearest first), their labels, the query's label and R:
    #   0: 1 2 3 4 5   a b a b c   a, R=2   first hit 1
    #   1: 0 2 3 4 5   a b a b c   a, R=2   first hit 1
    #   2: 1 0 3 4 5   a a a b c   b, R=1   first hit 4
    #   3: 4 2 1 0 5   b b a a c   a, R=2   first hit 3
    #   4: 3 2 1 0 5   a b a a c   b, R=1   first hit 2
    #   5: 4 3 2 1 0   b a b a a   c, R=0   lone: never a hit
    result = evaluate(LINE, LINE_LABELS, ks=(1, 2, 3, 4, 50), feat_norm=False, with_nmi=False)
    assert result["recall@1"] == pytest.approx(2 / 6)
    assert result["recall@2"] == pytest.approx(3 / 6)
    assert result["recall@3"] == pytest.approx(4 / 6)
    assert result["recall@4"] == pytest.approx(5 / 6)  # K larger than every class
    assert result["recall@50"] == pytest.approx(5 / 6)  # K beyond the gallery = whole gallery
    # AP@R looks at the first R only: 0: (1/1)/2   1: (1/1)/2   2, 3, 4: 0; query 5 left out.
    assert result["map@r"] == pytest.approx((0.5 + 0.5) / 5)
    assert result["r_precision"] == pytest.approx((0.5 + 0.5) / 5)
    assert result["num_queries"] == 6
    assert result["num_lone_queries"] == 1
    assert "confused_pairs" not in result
    # Wrong first neighbours: b->a (query 2), a->b (3), b->a (4), c->b (5): a and b are confused
    # 3 times among their 5 queries, b and c once among their 3.
    named = evaluate(LINE, LINE_LABELS, ks=(1,), feat_norm=False, with_nmi=False, confused_pairs=5)
    assert named["confused_pairs"] == [{"classes": ["a", "b"], "errors": 3, "queries": 5},
                                       {"classes": ["b", "c"], "errors": 1, "queries": 3}]
    assert evaluate(LINE, LINE_LABELS, ks=(1,), feat_norm=False, with_nmi=False,
                    confused_pairs=1)["confused_pairs"] == named["confused_pairs"][:1]


def test_most_confused_pairs_orders_by_errors_then_labels():
    query = np.array([3, 3, 1, 1, 2, 2, 5])
    first = np.array([1, 2, 3, 1, 3, 1, 5])  # 3<->1 twice, 3<->2 twice, 2<->1 once, 5 right
    assert most_confused_pairs(query, first, 10) == [
        {"classes": [1, 3], "errors": 2, "queries": 4}, {"classes": [2, 3], "errors": 2, "queries": 4},
        {"classes": [1, 2], "errors": 1, "queries": 4}]
    assert most_confused_pairs(query, query, 10) == []


def test_evaluate_by_hand_query_and_gallery():
    query = np.array([[2], [29], [10.4]], np.float32)
    query_labels = np.array(["b", "c", "z"])
    # Query 2 is at distance 1 from both 1 (a) and 3 (b): the tie goes to gallery
    # index 1, so the ranking is 1 2 0 ... = a b a: first hit 2; R=2, AP = (1/2)/2.
    # Query 29 -> 30 (c): first hit 1, R=1, AP = 1.
    # Query 10.4 has a label absent from the gallery: lone, a miss, left out of MAP@R.
    result = evaluate(LINE, LINE_LABELS, ks=(1, 2), feat_norm=False, with_nmi=False,
                      query=(query, query_labels))
    assert result["recall@1"] == pytest.approx(1 / 3)
    assert result["recall@2"] == pytest.approx(2 / 3)
    assert result["map@r"] == pytest.approx((0.25 + 1.0) / 2)
    assert result["num_queries"] == 3
    assert result["num_lone_queries"] == 1
    # No self-exclusion: a query equal to a gallery item finds it first.
    same = evaluate(LINE, LINE_LABELS, ks=(1,), feat_norm=False, with_nmi=False,
                    query=(LINE, LINE_LABELS))
    assert same["recall@1"] == 1.0


def test_metric_functions_on_given_neighbours():
    neighbor_labels = np.array([[1, 0, 1, 1], [0, 0, 0, 2], [3, 3, 3, 3]])
    query_labels = np.array([1, 2, 5])
    assert recall_at_k(neighbor_labels, query_labels, [1, 2, 4]) == {1: 1 / 3, 2: 1 / 3, 4: 2 / 3}
    relevant = np.array([3, 1, 0])
    # Query 0: hits at 1 and 3 among R=3 -> (1/1 + 2/3) / 3. Query 1: R=1, miss -> 0.
    assert map_at_r(neighbor_labels, query_labels, relevant) == pytest.approx(((1 + 2 / 3) / 3 + 0) / 2)
    assert r_precision(neighbor_labels, query_labels, relevant) == pytest.approx((2 / 3 + 0) / 2)
    assert math.isnan(map_at_r(neighbor_labels, query_labels, [0, 0, 0]))
    with pytest.raises(ValueError, match="needs 8 neighbours"):
        recall_at_k(neighbor_labels, query_labels, [8])
    with pytest.raises(ValueError, match="R = 5"):
        map_at_r(neighbor_labels, query_labels, [5, 1, 0])


# --- metrics against independent references ----------------------------------------

@pytest.mark.parametrize("feat_norm", [True, False])
def test_evaluate_matches_references_on_random_data(feat_norm):
    rng = np.random.default_rng(7)
    features, labels = clustered(rng, num_classes=12, per_class=15, dim=24, spread=1.5)
    labels = labels.copy()
    labels[:3] = [100, 101, 102]  # three lone queries
    result = evaluate(features, labels, ks=(1, 2, 4, 8), feat_norm=feat_norm, with_nmi=False, block_rows=16)

    order, _ = brute_force_neighbors(features, features, True, feat_norm)
    ranked_labels = labels[order[:, :-1]]  # drop the query itself (last, at distance inf)
    for k in (1, 2, 4, 8):
        hits = (ranked_labels[:, :k] == labels[:, None]).any(axis=1)
        assert result[f"recall@{k}"] == pytest.approx(hits.mean())
    assert result["map@r"] == pytest.approx(map_at_r_from_definition(labels, ranked_labels))
    assert result["num_lone_queries"] == 3
    assert 0 < result["map@r"] < 1


def recall_by_cosine_loop(features, labels, k):
    """Recall@K as a loop over queries: the K most cosine-similar other images, one query at a time."""
    hits = 0
    for i, query in enumerate(features):
        similarity = [float(np.dot(query, other) / (np.linalg.norm(query) * np.linalg.norm(other)))
                      for other in features]
        similarity[i] = -math.inf
        nearest = sorted(range(len(features)), key=lambda j: -similarity[j])[:k]
        hits += any(labels[j] == labels[i] for j in nearest)
    return hits / len(features)


def test_recall_matches_a_query_by_query_loop():
    rng = np.random.default_rng(3)
    features, labels = clustered(rng, num_classes=20, per_class=10, dim=32, spread=2.0)
    result = evaluate(features, labels, ks=(1, 2, 4, 8), with_nmi=False, block_rows=50)
    for k in (1, 2, 4, 8):
        assert result[f"recall@{k}"] == pytest.approx(recall_by_cosine_loop(features, labels, k))


# --- NMI ------------------------------------------------------------------------------

def test_nmi_is_one_on_well_separated_blobs():
    rng = np.random.default_rng(0)
    features, labels = clustered(rng, num_classes=5, per_class=20, dim=8, spread=0.01)
    assert nmi(features, labels * 7 + 3) == pytest.approx(1.0)


def test_nmi_is_low_for_labels_unrelated_to_the_features():
    rng = np.random.default_rng(0)
    features, _ = clustered(rng, num_classes=4, per_class=50, dim=8, spread=0.01)
    shuffled_labels = rng.integers(0, 4, len(features))
    assert nmi(features, shuffled_labels) < 0.1


def test_nmi_needs_two_classes():
    with pytest.raises(ValueError, match="at least 2 classes"):
        nmi(np.eye(3, dtype=np.float32), [1, 1, 1])


def test_evaluate_reports_nmi():
    rng = np.random.default_rng(0)
    features, labels = clustered(rng, num_classes=5, per_class=20, dim=8, spread=0.01)
    result = evaluate(features, labels)
    assert result["nmi"] == pytest.approx(1.0)
    assert result["recall@1"] == 1.0 and result["map@r"] == 1.0


def test_huge_embeddings_normalise_without_overflow():
    rng = np.random.default_rng(3)
    features = rng.standard_normal((40, 16)).astype(np.float32)
    labels = np.repeat(np.arange(8), 5)
    features[features.shape[0] // 2:] *= 1e25  # squares of these overflow float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        huge = evaluate(features, labels, ks=(1, 2), with_nmi=False)
    scaled = features / np.abs(features).max(axis=1, keepdims=True)
    assert huge == evaluate(scaled, labels, ks=(1, 2), with_nmi=False)
