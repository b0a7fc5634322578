"""evaluation.evaluator: the named metrics on hand-computed cases and against brute-force references."""
import math
import warnings

import numpy as np
import pytest

from embedding_references import brute_force_neighbors, clustered, map_at_r_from_definition
from evaluation.evaluator import Evaluator


def evaluate(features, labels, ks=(1, 2, 4, 8), feat_norm=True, query=None, with_nmi=True, block_rows=None,
             confused_pairs=0):
    names = ["recall_at_k", "map_at_r", "r_precision"] + ["nmi"] * with_nmi + ["confused_pairs"] * bool(confused_pairs)
    evaluator = Evaluator(names, ks=ks, feat_norm=feat_norm, block_rows=block_rows, confused_pairs=confused_pairs)
    return evaluator(features, labels, *(query or ()))


# --- retrieval metrics on hand-computed cases ------------------------------------------------

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


# --- the registry, the shared work and the other families of metrics ------------------------

def test_the_neighbours_are_searched_once_for_all_retrieval_metrics(monkeypatch):
    import evaluation.evaluator as evaluator_module

    calls = []
    search = evaluator_module.ranked_blocks
    monkeypatch.setattr(evaluator_module, "ranked_blocks", lambda *a, **k: calls.append(1) or search(*a, **k))
    rng = np.random.default_rng(5)
    features, labels = clustered(rng, num_classes=6, per_class=5, dim=8, spread=1.0)
    Evaluator(["recall_at_k", "map_at_r", "r_precision", "confused_pairs"])(features, labels)
    assert len(calls) == 1


def test_a_metric_is_one_function_and_one_registry_line(monkeypatch):
    import evaluation.evaluator as evaluator_module

    def median_first_hit(evaluation):
        ranks = np.argmax(evaluation.neighbors.hits, axis=1) + 1
        return {"median_first_hit": float(np.median(ranks))}

    monkeypatch.setitem(evaluator_module.METRICS, "median_first_hit", median_first_hit)
    # LINE's first hits (see above): 1 1 4 3 2, and none for the lone query 5 (argmax 0: rank 1).
    result = Evaluator(["median_first_hit"], feat_norm=False)(LINE, LINE_LABELS)
    assert result == {"median_first_hit": 1.5, "num_queries": 6, "num_lone_queries": 1}
    with pytest.raises(ValueError, match="unknown metric.*nosuch.*known: recall_at_k"):
        Evaluator(["recall_at_k", "nosuch"])


def test_reid_metrics_with_and_without_re_ranking_match_evaluation_reid():
    from embedding_references import fake_reid
    from evaluation.reid import reid_metrics
    from evaluation.reranking import KReciprocalReranker

    query, query_ids, query_cams, gallery, gallery_ids, gallery_cams = data = fake_reid(8)

    def run(**settings):
        return Evaluator(["map", "cmc"], **settings)(gallery, gallery_ids, query, query_ids, gallery_cams, query_cams)

    plain = run()
    assert plain == {**reid_metrics(*data), "re_ranking": False}
    reranked = run(re_ranking=True)
    assert reranked == {**reid_metrics(*data, distance_fn=KReciprocalReranker(query, gallery)), "re_ranking": True}
    assert reranked["map"] != plain["map"]
    assert set(run(max_rank=3)) == {"map", "cmc@1", "cmc@3", "num_valid_queries", "num_skipped_queries",
                                    "num_queries", "re_ranking"}
    with pytest.raises(ValueError, match="cameras"):
        Evaluator(["map"])(gallery, gallery_ids, query, query_ids)


def test_threshold_is_over_the_pairs_of_query_and_gallery_together():
    from evaluation.threshold import verification_threshold

    rng = np.random.default_rng(2)
    features, labels = clustered(rng, num_classes=5, per_class=6, dim=8, spread=1.0)
    labels[-3:] = -1
    found = Evaluator(["threshold"], ignore_labels=(-1,))(features[10:], labels[10:], features[:10], labels[:10])
    want = verification_threshold(features, labels, ignore_labels=(-1,))
    assert found == {"threshold": want["threshold"], "threshold_accuracy": want["accuracy"],
                     "tpr@fpr1e-3": want["tpr_at_fpr"], "num_positive_pairs": want["num_positive_pairs"],
                     "num_negative_pairs": want["num_negative_pairs"], "num_queries": 10}
    assert found["num_positive_pairs"] + found["num_negative_pairs"] == 27 * 26 // 2
