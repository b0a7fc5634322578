"""evaluation/postprocess.py against dense references written from the definitions (Radenovic et al. 2018)."""
import numpy as np
import pytest

from embedding_references import clustered, map_at_r_from_definition
from evaluation.evaluator import Evaluator
from evaluation.postprocess import (Expansion, PostProcessing, augment_database, expand_queries,
                                    ranked_blocks)
from evaluation.reranking import KReciprocalReranker


def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def dense_expansion(vectors, database, k, alpha, exclude_self):
    """Each vector v -> normalise(v + sum over its k most similar database vectors d of max(0, v.d)^alpha d)."""
    out = []
    for i, v in enumerate(vectors):
        similarity = database @ v
        others = [j for j in range(len(database)) if not (exclude_self and j == i)]
        nearest = sorted(others, key=lambda j: (-similarity[j], j))[:k]
        out.append(v + sum(max(0.0, similarity[j]) ** alpha * database[j] for j in nearest))
    return unit(out)


def dense_ranking(query, gallery, leave_one_out):
    similarity = query @ gallery.T
    if leave_one_out:
        np.fill_diagonal(similarity, -np.inf)
    return np.argsort(-similarity, axis=1, kind="stable")


def data(seed, num_classes=6, per_class=7, dim=6):
    return clustered(np.random.default_rng(seed), num_classes, per_class, dim, spread=1.3)


@pytest.mark.parametrize("k, alpha", [(1, 0.0), (3, 3.0), (5, 0.5), (100, 1.0)])
def test_expansions_match_the_definition(k, alpha):
    features, _ = data(0)
    database = unit(features)
    queries = unit(data(1)[0][:9])
    expansion = Expansion(k, alpha)
    augmented = augment_database(database.astype(np.float32), expansion)
    assert np.allclose(augmented, dense_expansion(database, database, k, alpha, exclude_self=True), atol=1e-5)
    expanded = expand_queries(queries.astype(np.float32), augmented, expansion)
    reference = dense_expansion(queries, augmented.astype(np.float64), k, alpha, exclude_self=False)
    assert np.allclose(expanded, reference, atol=1e-5)


# (DBA with alpha 0 can make two database vectors equal: a tie the float32 and float64 pipelines may break apart.)
@pytest.mark.parametrize("dba, qe", [((4, 3.0), None), (None, (3, 3.0)), ((2, 1.0), (4, 0.0))])
def test_leave_one_out_metrics_match_the_dense_pipeline(dba, qe):
    features, labels = data(2)
    found = Evaluator(["recall_at_k", "map_at_r"], ks=(1, 2), database_augmentation=dba and Expansion(*dba),
                      query_expansion=qe and Expansion(*qe))(features, labels)
    vectors = unit(features)
    database = dense_expansion(vectors, vectors, *dba, exclude_self=True) if dba else vectors
    # A query is its own original vector; it is never its own neighbour.
    queries = dense_expansion(vectors, database, *qe, exclude_self=True) if qe else vectors
    ranked = dense_ranking(queries, database, leave_one_out=True)[:, :-1]
    ranked_labels = labels[ranked]
    assert found["recall@1"] == pytest.approx(np.mean(ranked_labels[:, 0] == labels))
    assert found["recall@2"] == pytest.approx(np.mean((ranked_labels[:, :2] == labels[:, None]).any(axis=1)))
    assert found["map@r"] == pytest.approx(map_at_r_from_definition(labels, ranked_labels))
    plain = Evaluator(["recall_at_k", "map_at_r"], ks=(1, 2))(features, labels)
    assert found["map@r"] != plain["map@r"]  # the post-processing changed the ranking


def test_query_list_against_a_gallery():
    gallery, gallery_labels = data(3)
    query, query_labels = data(3, per_class=2)
    found = Evaluator(["map_at_r"], database_augmentation=Expansion(3, 2.0), query_expansion=Expansion(2, 3.0))(
        gallery, gallery_labels, query, query_labels)
    database = dense_expansion(unit(gallery), unit(gallery), 3, 2.0, exclude_self=True)
    queries = dense_expansion(unit(query), database, 2, 3.0, exclude_self=False)
    ranked_labels = gallery_labels[dense_ranking(queries, database, leave_one_out=False)]
    assert found["map@r"] == pytest.approx(map_at_r_from_definition(query_labels, ranked_labels))


def test_one_pool_reranker_is_the_two_list_one_on_the_same_pool():
    features, _ = data(4)
    whole = KReciprocalReranker(features, None, k1=6, k2=3)
    full = whole(0, len(features))
    split = KReciprocalReranker(features[:10], features[10:], k1=6, k2=3)
    assert full.shape == (len(features), len(features))
    assert np.allclose(full[:10, 10:], split(0, 10), atol=1e-12)


def test_leave_one_out_re_ranking_ranks_by_the_reranked_distances():
    features, labels = data(5)
    post = PostProcessing(re_ranking=True)
    wanted = np.full(len(features), len(features) - 1)
    blocks = list(ranked_blocks(features, features, wanted, True, True, post))
    order = np.concatenate([indices for _, indices, _ in blocks])
    distances = KReciprocalReranker(features, None)(0, len(features))
    np.fill_diagonal(distances, np.inf)
    assert np.array_equal(order, np.argsort(distances, axis=1, kind="stable")[:, :-1])
    found = Evaluator(["map_at_r"], re_ranking=True)(features, labels)
    assert found["map@r"] == pytest.approx(map_at_r_from_definition(labels, labels[order]))
    assert found["post_processing"] == "k-reciprocal re-ranking"


def test_re_ranking_a_query_list_with_augmented_gallery():
    gallery, gallery_labels = data(6)
    query, query_labels = data(7, per_class=2)
    found = Evaluator(["map_at_r"], database_augmentation=Expansion(2, 3.0), re_ranking=True)(
        gallery, gallery_labels, query, query_labels)
    database = augment_database(unit(gallery).astype(np.float32), Expansion(2, 3.0))
    distances = KReciprocalReranker(unit(query), database, feat_norm=False)(0, len(query))
    ranked_labels = gallery_labels[np.argsort(distances, axis=1, kind="stable")]
    assert found["map@r"] == pytest.approx(map_at_r_from_definition(query_labels, ranked_labels))


def test_refusals():
    with pytest.raises(ValueError, match="need k >= 1"):
        Expansion(0, 1.0)
    with pytest.raises(ValueError, match="need k >= 1"):
        Expansion(2, -1.0)
    with pytest.raises(ValueError, match="not both"):
        PostProcessing(query_expansion=Expansion(2, 1.0), re_ranking=True)
    features, labels = data(8)
    with pytest.raises(ValueError, match="need normalised embeddings"):
        Evaluator(["recall_at_k"], feat_norm=False, query_expansion=Expansion(2, 1.0))(features, labels)
