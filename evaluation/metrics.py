"""Retrieval metrics of ranked neighbours: Recall@K, MAP@R, R-precision, NMI, the most confused pairs.

Each metric is a function of a hit matrix: hits[i, j] is True when the j-th nearest gallery item
of query i (nearest first) shares the query's label. evaluation/evaluator.py finds the neighbours
once (evaluation/distances.py) and hands the same matrix to every metric; a caller with its own
neighbours builds it as `neighbor_labels == query_labels[:, None]`.

R. For a query labelled y, R is the number of gallery items labelled y (the query itself excluded
in leave-one-out evaluation): relevant_counts().

Edge cases.
- Lone query (R = 0: no other item of its label in the gallery): counts as a miss for Recall@K;
  excluded from MAP@R and R-precision.
- K larger than a class: Recall@K is still "at least one of the K nearest has the query's
  label"; MAP@R and R-precision use R = the query's own count.
- MAP@R and R-precision need the first R neighbours of every query, Recall@K the first K.
- NMI needs at least two classes.
"""
import faiss
import numpy as np

from evaluation.distances import as_matrix


def relevant_counts(query_labels, gallery_labels, leave_one_out):
    """R of each query: gallery items with its label, itself excluded when leave_one_out."""
    classes, sizes = np.unique(np.asarray(gallery_labels), return_counts=True)
    query_labels = np.asarray(query_labels)
    position = np.clip(np.searchsorted(classes, query_labels), 0, len(classes) - 1)
    counts = np.where(classes[position] == query_labels, sizes[position], 0)
    return counts - 1 if leave_one_out else counts


def first_hit_ranks(hits):
    """1-based position of the first hit of each query, inf when it has none among its neighbours."""
    hits = np.asarray(hits, bool)
    first = np.argmax(hits, axis=1) + 1.0
    return np.where(hits.any(axis=1), first, np.inf)


def recall_at_k(hits, ks):
    """{K: share of queries with at least one hit among their K nearest neighbours}.

    A query without any hit among the neighbours (e.g. a lone query) is a miss.
    """
    hits = np.asarray(hits, bool)
    if max(ks) > hits.shape[1]:
        raise ValueError(f"Recall@{max(ks)} needs {max(ks)} neighbours, got {hits.shape[1]}")
    ranks = first_hit_ranks(hits)
    return {k: float(np.mean(ranks <= k)) for k in ks}


def map_at_r(hits, relevant):
    """MAP@R of Musgrave et al., "A Metric Learning Reality Check" (ECCV 2020).

    For a query with R relevant gallery items: AP@R = (1/R) * sum over i = 1..R of P(i) * hit(i),
    P(i) = share of hits among the first i neighbours. MAP@R is the mean over queries with R > 0;
    nan when there is none.
    """
    return _nanmean(average_precision_at_r(*_within_r(hits, relevant)))


def r_precision(hits, relevant):
    """Mean over queries with R > 0 of (hits among the first R neighbours) / R; nan when there is none."""
    return _nanmean(precision_at_r(*_within_r(hits, relevant)))


def average_precision_at_r(hits, relevant):
    """AP@R per query (nan where R = 0), hits having at least max R columns."""
    counted = hits & (np.arange(hits.shape[1]) < relevant[:, None])
    precision_at_i = np.cumsum(counted, axis=1) / np.arange(1, hits.shape[1] + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(precision_at_i * counted, axis=1) / np.where(relevant > 0, relevant, np.nan)


def precision_at_r(hits, relevant):
    """Share of hits among the first R neighbours per query (nan where R = 0)."""
    within_r = np.arange(hits.shape[1]) < relevant[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(hits & within_r, axis=1) / np.where(relevant > 0, relevant, np.nan)


def nmi(features, labels, seed=0):
    """Normalised mutual information between the labels and a k-means clustering.

    k-means (faiss, at most 25 iterations, seeded) runs with as many clusters
    as there are labels on the features as given (normalise them first if
    wanted); the score is sklearn's normalized_mutual_info_score (arithmetic
    mean normalisation). Raises ValueError with fewer than 2 classes.
    """
    # sklearn.metrics takes ~0.7 s to import: only pay for it when NMI is asked for.
    from sklearn.metrics import normalized_mutual_info_score

    features = as_matrix(features, "features")
    labels = np.asarray(labels)
    num_classes = len(np.unique(labels))
    if num_classes < 2:
        raise ValueError(f"NMI needs at least 2 classes, got {num_classes}")
    return float(normalized_mutual_info_score(labels, kmeans_clusters(features, num_classes, seed)))


def kmeans_clusters(features, num_clusters, seed=0):
    """Cluster id [N] of each row of `features` by k-means (faiss, at most 25 iterations, seeded)."""
    features = as_matrix(features, "features")
    kmeans = faiss.Kmeans(features.shape[1], num_clusters, niter=25, seed=seed,
                          min_points_per_centroid=1, verbose=False)
    kmeans.train(features)
    _, clusters = kmeans.index.search(features, 1)
    return clusters[:, 0].astype(np.int64)


def most_confused_pairs(query_labels, first_labels, top):
    """The `top` pairs of classes whose queries most often find the other class first.

    Returns [{"classes": [a, b], "errors": n, "queries": m}, ...], most errors first: n of the
    m queries of classes a and b have their nearest neighbour in the other class of the pair.
    Look-alike classes that no embedding can separate show up here with n near m / 2.
    """
    query_labels, first_labels = np.asarray(query_labels), np.asarray(first_labels)
    wrong = query_labels != first_labels
    pairs = np.sort(np.stack([query_labels[wrong], first_labels[wrong]], axis=1), axis=1)
    if not len(pairs):
        return []
    unique, counts = np.unique(pairs, axis=0, return_counts=True)
    order = np.lexsort((unique[:, 1], unique[:, 0], -counts))[:top]  # most errors first, ties by label
    classes, sizes = np.unique(query_labels, return_counts=True)
    size_of = dict(zip(classes.tolist(), sizes.tolist()))
    found = []
    for i in order:
        a, b = unique[i].tolist()
        found.append({"classes": [a, b], "errors": int(counts[i]), "queries": size_of.get(a, 0) + size_of.get(b, 0)})
    return found


def _within_r(hits, relevant):
    hits, relevant = np.asarray(hits, bool), np.asarray(relevant)
    if relevant.max(initial=0) > hits.shape[1]:
        raise ValueError(f"R = {relevant.max()} needs as many neighbours, got {hits.shape[1]}")
    return hits, relevant


def _nanmean(values):
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if len(kept) else float("nan")
