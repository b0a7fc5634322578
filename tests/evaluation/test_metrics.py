"""evaluation.metrics: the metric functions on given hit matrices, the confused pairs and NMI."""
import math

import numpy as np
import pytest

from embedding_references import clustered
from evaluation.metrics import map_at_r, most_confused_pairs, nmi, r_precision, recall_at_k, relevant_counts


def test_most_confused_pairs_orders_by_errors_then_labels():
    query = np.array([3, 3, 1, 1, 2, 2, 5])
    first = np.array([1, 2, 3, 1, 3, 1, 5])  # 3<->1 twice, 3<->2 twice, 2<->1 once, 5 right
    assert most_confused_pairs(query, first, 10) == [
        {"classes": [1, 3], "errors": 2, "queries": 4}, {"classes": [2, 3], "errors": 2, "queries": 4},
        {"classes": [1, 2], "errors": 1, "queries": 4}]
    assert most_confused_pairs(query, query, 10) == []


def test_metric_functions_on_given_hits():
    neighbor_labels = np.array([[1, 0, 1, 1], [0, 0, 0, 2], [3, 3, 3, 3]])
    hits = neighbor_labels == np.array([1, 2, 5])[:, None]
    assert recall_at_k(hits, [1, 2, 4]) == {1: 1 / 3, 2: 1 / 3, 4: 2 / 3}
    assert recall_at_k(hits[:, ::-1], [1, 2, 4]) == {1: 2 / 3, 2: 2 / 3, 4: 2 / 3}
    assert recall_at_k(hits[:2, [1, 0, 2, 3]], [1, 2]) == {1: 0.0, 2: 0.5}
    relevant = np.array([3, 1, 0])
    # Query 0: hits at 1 and 3 among R=3 -> (1/1 + 2/3) / 3. Query 1: R=1, miss -> 0. Query 2: left out.
    assert map_at_r(hits, relevant) == pytest.approx(((1 + 2 / 3) / 3 + 0) / 2)
    assert r_precision(hits, relevant) == pytest.approx((2 / 3 + 0) / 2)
    assert math.isnan(map_at_r(hits, [0, 0, 0])) and math.isnan(r_precision(hits, [0, 0, 0]))
    with pytest.raises(ValueError, match="needs 8 neighbours"):
        recall_at_k(hits, [8])
    with pytest.raises(ValueError, match="R = 5"):
        map_at_r(hits, [5, 1, 0])


def test_relevant_counts_leave_the_query_out_or_count_a_missing_label_as_zero():
    gallery = np.array(["a", "a", "b", "c", "a"])
    assert relevant_counts(gallery, gallery, leave_one_out=True).tolist() == [2, 2, 0, 0, 2]
    assert relevant_counts(np.array(["b", "z", "a", "0"]), gallery, leave_one_out=False).tolist() == [1, 0, 3, 0]


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
