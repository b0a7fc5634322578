"""evaluation/reranking.py against a dense, loop-by-loop version of the same definition."""
import math

import numpy as np
import pytest

from evaluation.reid import reid_metrics
from evaluation.reranking import KReciprocalReranker, re_rank


def brute_force(query, gallery, k1, k2, lam, feat_norm=True):
    """The authors' algorithm as issue 30 describes it, with a full pool x pool matrix and Python sets.

    Squared distances over the pool divided by each column's maximum (then transposed), the V rows
    normalised to sum 1, Jaccard distance 1 - m / (2 - m) with m the sum of minima.
    """
    pool = np.concatenate([query, gallery]).astype(np.float64)
    if feat_norm:
        pool = pool / np.linalg.norm(pool, axis=1, keepdims=True)
    n, nq = len(pool), len(query)
    squared = np.array([[float(np.sum((pool[i] - pool[j]) ** 2)) for j in range(n)] for i in range(n)])
    dist = (squared / squared.max(axis=0)).T
    ranking = [[i] + sorted((j for j in range(n) if j != i), key=lambda j: (dist[i, j], j)) for i in range(n)]

    def reciprocal(i, k):
        return {j for j in ranking[i][:k + 1] if i in ranking[j][:k + 1]}

    half = int(np.around(k1 / 2))
    vectors = np.zeros((n, n))
    for i in range(n):
        members = reciprocal(i, k1)
        grown = set(members)
        for q in members:
            candidate = reciprocal(q, half)
            if len(candidate & members) > 2 / 3 * len(candidate):
                grown |= candidate
        for j in grown:
            vectors[i, j] = math.exp(-dist[i, j])
        vectors[i] /= vectors[i].sum()
    expanded = np.array([vectors[ranking[i][:k2]].mean(axis=0) for i in range(n)])
    out = np.zeros((nq, n - nq))
    for a in range(nq):
        for b in range(n - nq):
            shared = np.minimum(expanded[a], expanded[nq + b]).sum()
            out[a, b] = (1 - lam) * (1 - shared / (2 - shared)) + lam * dist[a, nq + b]
    return out


@pytest.mark.parametrize("seed, k1, k2, lam, feat_norm", [
    (0, 20, 6, 0.3, True),
    (1, 5, 3, 0.3, True),
    (2, 8, 1, 0.5, False),
    (3, 4, 2, 0.0, True),
    (4, 200, 6, 0.3, True),  # k1 beyond the pool: every image is a neighbour
])
def test_matches_brute_force(seed, k1, k2, lam, feat_norm):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, 5)) * 2
    query = (centres[rng.integers(0, 6, 9)] + rng.normal(size=(9, 5))).astype(np.float32)
    gallery = (centres[rng.integers(0, 6, 31)] + rng.normal(size=(31, 5))).astype(np.float32) * 3
    expected = brute_force(query, gallery, k1, k2, lam, feat_norm)
    got = re_rank(query, gallery, k1, k2, lam, feat_norm)
    assert got.shape == (9, 31)
    assert np.allclose(got, expected, atol=2e-5)


def test_blocks_and_small_gather_chunks_agree(monkeypatch):
    rng = np.random.default_rng(7)
    query, gallery = rng.normal(size=(12, 6)).astype(np.float32), rng.normal(size=(50, 6)).astype(np.float32)
    whole = re_rank(query, gallery, k1=6, k2=3)
    import evaluation.reranking as reranking
    monkeypatch.setattr(reranking, "_GATHER_CHUNK", 7)
    reranker = KReciprocalReranker(query, gallery, k1=6, k2=3)
    blocks = np.vstack([reranker(start, min(start + 5, 12)) for start in range(0, 12, 5)])
    assert np.allclose(blocks, whole, atol=1e-12)


def test_lambda_one_keeps_the_original_order():
    rng = np.random.default_rng(8)
    query, gallery = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(20, 3)).astype(np.float32)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    original = ((unit(query)[:, None] - unit(gallery)[None]) ** 2).sum(-1)
    assert (np.argsort(re_rank(query, gallery, lambda_value=1.0), 1) == np.argsort(original, 1)).all()


def fixable_scene():
    """One query whose nearest gallery image is a stranger, while its own person forms a tight group.

    Person A: the query (camera 1) and five gallery images (camera 2) in a tight cluster a little
    off the query. Person B: one gallery image (camera 3) right beside the query, whose own
    neighbourhood is the rest of B (five images, camera 3) further away on the other side.
    """
    query = np.array([[0.0, 0.0]], np.float32)
    person_a = np.array([[1.0, 0.0], [1.05, 0.05], [1.05, -0.05], [1.1, 0.0], [1.0, 0.08]], np.float32)
    person_b = np.array([[-0.8, 0.0], [-1.6, 0.0], [-1.65, 0.05], [-1.65, -0.05], [-1.7, 0.0],
                         [-1.6, 0.08]], np.float32)
    gallery = np.vstack([person_b, person_a]) + np.array([0.0, 10.0], np.float32)  # away from the origin
    query = query + np.array([0.0, 10.0], np.float32)
    gallery_ids = np.array([2] * 6 + [1] * 5)
    gallery_cams = np.array([3] * 6 + [2] * 5)
    return query, np.array([1]), np.array([1]), gallery, gallery_ids, gallery_cams


def test_re_ranking_fixes_a_ranking():
    query, query_ids, query_cams, gallery, gallery_ids, gallery_cams = fixable_scene()
    before = reid_metrics(query, query_ids, query_cams, gallery, gallery_ids, gallery_cams, feat_norm=False)
    assert before["cmc@1"] == 0  # the stranger of person B is nearest
    reranker = KReciprocalReranker(query, gallery, k1=5, k2=1, lambda_value=0.3, feat_norm=False)
    after = reid_metrics(query, query_ids, query_cams, gallery, gallery_ids, gallery_cams, feat_norm=False,
                         distance_fn=reranker)
    assert after["cmc@1"] == 1 and after["map"] > before["map"]
    assert np.allclose(reranker(0, 1), brute_force(query, gallery, 5, 1, 0.3, feat_norm=False), atol=1e-6)


def test_bad_parameters():
    with pytest.raises(ValueError, match="k1"):
        re_rank(np.ones((2, 3)), np.ones((3, 3)), k1=0)
    with pytest.raises(ValueError, match="dimensions differ"):
        re_rank(np.ones((2, 3)), np.ones((3, 4)))
