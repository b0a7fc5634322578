"""Retrieval metrics for embeddings: Recall@K, MAP@R, R-precision and NMI.

Protocol. By default every evaluation embedding is a query against all the
others, excluding itself (leave-one-out), as in the CUB-200 / Cars196 /
Stanford Online Products benchmarks. A separate query set searched against a
gallery set (image retrieval, re-identification) is also supported; no
self-exclusion happens then.

Distance. With feat_norm=True the embeddings are L2-normalised first and
neighbours are ranked by Euclidean distance between the unit vectors (the
same order as cosine similarity); with feat_norm=False by raw Euclidean
distance. Everything is computed in float32.

Ties. Neighbours at equal computed distance are ordered by gallery index,
smallest first, including at the K-th place: the result is deterministic.

Scale. Exact nearest neighbours come from faiss's brute-force search
(faiss.knn: blocked matrix products feeding a top-k heap, never an N x N
matrix), called a block of queries at a time so that the neighbours held at
once stay under BLOCK_BYTES even when MAP@R needs many. It measured as fast
as or faster than a numpy matmul + np.partition version (bench/bench_knn.py).
With feat_norm=True a normalised copy of the embeddings is made: 60,000 x
2048-d embeddings evaluate within about 0.5 GiB beyond the embeddings.

Edge cases.
- Lone query (no other item of its label in the gallery): counts as a miss
  for Recall@K; excluded from MAP@R and R-precision (evaluate() reports how
  many as "num_lone_queries").
- K larger than a class: Recall@K is still "at least one of the K nearest
  has the query's label"; MAP@R and R-precision use R = the query's own count.
- K larger than the gallery: evaluate() searches the whole gallery, so
  Recall@K equals Recall@(gallery size); nearest_neighbors() refuses such K.
- MAP@R needs the R_max nearest neighbours of a query, R_max = largest class
  size - 1: memory stays bounded because only one block of queries holds
  neighbours at a time, but time grows with R_max.
- NMI needs at least two classes.
"""
import faiss
import numpy as np

BLOCK_BYTES = 256 * 2**20
# Per neighbour of a query in a block: faiss's heap (float32 + int64), the
# returned copies, the self-less copies and the hit/label arrays of evaluate().
_BYTES_PER_NEIGHBOR = 64


def nearest_neighbors(query, gallery, k, exclude_self=False, feat_norm=True, block_rows=None):
    """Exact k nearest gallery items of every query row.

    Args:
        query: [Nq, D] embeddings.
        gallery: [Ng, D] embeddings.
        k: neighbours per query; at most Ng (Ng - 1 with exclude_self).
        exclude_self: query row i is gallery row i and must not be its own
            neighbour (leave-one-out); query and gallery must then be the
            same rows.
        feat_norm: L2-normalise first (cosine ranking); False = raw Euclidean.
        block_rows: queries per block; default keeps a block under BLOCK_BYTES.

    Returns:
        indices: int64 [Nq, k] gallery rows, nearest first, ties by index.
        distances: float32 [Nq, k] squared Euclidean distances (between the
            unit vectors when feat_norm is True, i.e. 2 - 2 cos).
    """
    query, gallery = _as_matrix(query, "query"), _as_matrix(gallery, "gallery")
    _check_pair(query, gallery, exclude_self)
    candidates = len(gallery) - int(exclude_self)
    if not 1 <= k <= candidates:
        raise ValueError(f"k must be between 1 and {candidates} (the gallery size), got {k}")
    indices = np.empty((len(query), k), np.int64)
    distances = np.empty((len(query), k), np.float32)
    wanted = np.full(len(query), k)
    for start, block_indices, block_distances in _neighbor_blocks(
            query, gallery, wanted, exclude_self, feat_norm, block_rows):
        stop = start + len(block_indices)
        indices[start:stop] = block_indices
        distances[start:stop] = block_distances
    return indices, distances


def recall_at_k(neighbor_labels, query_labels, ks):
    """Share of queries with at least one of their K nearest neighbours sharing their label.

    Args:
        neighbor_labels: [Nq, k] labels of the ranked neighbours, k >= max(ks).
        query_labels: [Nq] labels of the queries.
        ks: the K values.

    Returns:
        {K: recall} with recall in [0, 1]. A query without any item of its
        label among the neighbours (e.g. a lone query) is a miss.
    """
    neighbor_labels = np.asarray(neighbor_labels)
    if max(ks) > neighbor_labels.shape[1]:
        raise ValueError(f"Recall@{max(ks)} needs {max(ks)} neighbours, got {neighbor_labels.shape[1]}")
    ranks = _first_hit_rank(neighbor_labels, np.asarray(query_labels))
    return {k: float(np.mean(ranks <= k)) for k in ks}


def map_at_r(neighbor_labels, query_labels, relevant_counts):
    """MAP@R of Musgrave et al., "A Metric Learning Reality Check" (ECCV 2020).

    For a query with R relevant gallery items (same label, itself excluded):
    AP@R = (1/R) * sum over i = 1..R of P(i) * [neighbour i is relevant],
    P(i) = share of relevant items among the first i neighbours. MAP@R is the
    mean over queries with R > 0; queries with R = 0 are left out.

    Args:
        neighbor_labels: [Nq, k] labels of the ranked neighbours, k >= max R.
        query_labels: [Nq] labels of the queries.
        relevant_counts: [Nq] R of each query.

    Returns:
        MAP@R in [0, 1], or nan when no query has R > 0.
    """
    return _mean_over_relevant(_average_precision_at_r, neighbor_labels, query_labels, relevant_counts)


def r_precision(neighbor_labels, query_labels, relevant_counts):
    """Mean over queries with R > 0 of (relevant items among the first R neighbours) / R.

    Arguments as for map_at_r; nan when no query has R > 0.
    """
    return _mean_over_relevant(_precision_at_r, neighbor_labels, query_labels, relevant_counts)


def nmi(features, labels, seed=0):
    """Normalised mutual information between the labels and a k-means clustering.

    k-means (faiss, at most 25 iterations, seeded) runs with as many clusters
    as there are labels on the features as given (normalise them first if
    wanted); the score is sklearn's normalized_mutual_info_score (arithmetic
    mean normalisation). Raises ValueError with fewer than 2 classes.
    """
    # sklearn.metrics takes ~0.7 s to import: only pay for it when NMI is asked for.
    from sklearn.metrics import normalized_mutual_info_score

    features = _as_matrix(features, "features")
    labels = np.asarray(labels)
    num_classes = len(np.unique(labels))
    if num_classes < 2:
        raise ValueError(f"NMI needs at least 2 classes, got {num_classes}")
    return float(normalized_mutual_info_score(labels, kmeans_clusters(features, num_classes, seed)))


def kmeans_clusters(features, num_clusters, seed=0):
    """Cluster id [N] of each row of `features` by k-means (faiss, at most 25 iterations, seeded)."""
    features = _as_matrix(features, "features")
    kmeans = faiss.Kmeans(features.shape[1], num_clusters, niter=25, seed=seed,
                          min_points_per_centroid=1, verbose=False)
    kmeans.train(features)
    _, clusters = kmeans.index.search(features, 1)
    return clusters[:, 0].astype(np.int64)


def evaluate(features, labels, ks=(1, 2, 4, 8), feat_norm=True, query=None, with_nmi=True,
             block_rows=None, seed=0, confused_pairs=0):
    """All retrieval metrics in one pass over the neighbours.

    Leave-one-out by default: every row of `features` is a query against the
    others. With query=(query_features, query_labels), those are searched
    against `features`/`labels` as the gallery instead.

    Returns:
        {"recall@K": ... for each K, "map@r": ..., "r_precision": ...,
         "nmi": ... (on the gallery; absent when with_nmi is False),
         "num_queries": ..., "num_lone_queries": ...,
         "confused_pairs": most_confused_pairs(...) (only when confused_pairs > 0)}
        map@r and r_precision leave out lone queries (no relevant item in the
        gallery); they are nan if every query is lone.
    """
    gallery, gallery_labels = _as_matrix(features, "features"), np.asarray(labels)
    leave_one_out = query is None
    if leave_one_out:
        queries, query_labels = gallery, gallery_labels
    else:
        queries, query_labels = _as_matrix(query[0], "query features"), np.asarray(query[1])
    _check_labels(gallery, gallery_labels, "features")
    _check_labels(queries, query_labels, "query features")
    _check_pair(queries, gallery, leave_one_out)
    if min(ks) < 1:
        raise ValueError(f"K must be positive, got {list(ks)}")

    relevant = _relevant_counts(query_labels, gallery_labels, leave_one_out)
    candidates = len(gallery) - int(leave_one_out)
    if candidates < 1:
        raise ValueError("leave-one-out evaluation needs at least 2 embeddings")
    wanted = np.maximum(min(max(ks), candidates), relevant)

    ranks = np.empty(len(queries))
    average_precision = np.empty(len(queries))
    precision = np.empty(len(queries))
    first_labels = np.empty(len(queries), dtype=gallery_labels.dtype)
    for start, indices, _ in _neighbor_blocks(queries, gallery, wanted, leave_one_out, feat_norm, block_rows):
        stop = start + len(indices)
        hits = gallery_labels[indices] == query_labels[start:stop, None]
        ranks[start:stop] = _rank_of_first_true(hits)
        average_precision[start:stop] = _average_precision_at_r(hits, relevant[start:stop])
        precision[start:stop] = _precision_at_r(hits, relevant[start:stop])
        first_labels[start:stop] = gallery_labels[indices[:, 0]]

    results = {f"recall@{k}": float(np.mean(ranks <= min(k, candidates))) for k in ks}
    results["map@r"] = _nanmean(average_precision)
    results["r_precision"] = _nanmean(precision)
    if with_nmi:
        results["nmi"] = nmi(_l2_normalized(gallery) if feat_norm else gallery, gallery_labels, seed)
    results["num_queries"] = len(queries)
    results["num_lone_queries"] = int(np.sum(relevant == 0))
    if confused_pairs > 0:
        results["confused_pairs"] = most_confused_pairs(query_labels, first_labels, confused_pairs)
    return results


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


def _neighbor_blocks(query, gallery, wanted, exclude_self, feat_norm, block_rows):
    """Yield (first query row, indices, distances) per block of queries.

    wanted[i] is how many neighbours query i needs; a block returns the
    largest number its queries need.
    """
    if feat_norm:
        gallery = _l2_normalized(gallery)
        query = gallery if exclude_self else _l2_normalized(query)
    rows = block_rows or _block_rows(int(wanted.max()))
    for start in range(0, len(query), rows):
        block = query[start:start + rows]
        k = int(wanted[start:start + rows].max())
        # Squared L2 for both settings: on unit vectors it ranks like cosine
        # similarity, and faiss's L2 heap breaks ties by the smaller index.
        distances, indices = faiss.knn(block, gallery, k + int(exclude_self), metric=faiss.METRIC_L2)
        if exclude_self:
            indices, distances = _drop_self(indices, distances, start)
        yield start, indices, distances


def _drop_self(indices, distances, start):
    """Remove each query's own row from its k + 1 neighbours (or the last one if absent)."""
    is_self = indices == np.arange(start, start + len(indices))[:, None]
    # Duplicates of a query tie with it and may come first, pushing it out of the k + 1.
    is_self[~is_self.any(axis=1), -1] = True
    shape = (len(indices), indices.shape[1] - 1)
    return indices[~is_self].reshape(shape), distances[~is_self].reshape(shape)


def _block_rows(k):
    """Queries per block: faiss's own query block, fewer when k is large (MAP@R on big classes)."""
    return int(min(4096, max(1, BLOCK_BYTES // (k * _BYTES_PER_NEIGHBOR))))


def _relevant_counts(query_labels, gallery_labels, leave_one_out):
    """R of each query: gallery items with its label, itself excluded."""
    classes, sizes = np.unique(gallery_labels, return_counts=True)
    position = np.clip(np.searchsorted(classes, query_labels), 0, len(classes) - 1)
    counts = np.where(classes[position] == query_labels, sizes[position], 0)
    return counts - 1 if leave_one_out else counts


def _first_hit_rank(neighbor_labels, query_labels):
    return _rank_of_first_true(neighbor_labels == query_labels[:, None])


def _rank_of_first_true(hits):
    """1-based position of the first True per row, inf when there is none."""
    first = np.argmax(hits, axis=1) + 1.0
    return np.where(hits.any(axis=1), first, np.inf)


def _average_precision_at_r(hits, relevant):
    """AP@R per query (nan where R = 0) from the [Nq, >= max R] hit matrix."""
    within_r = np.arange(hits.shape[1]) < relevant[:, None]
    counted = hits & within_r
    precision_at_i = np.cumsum(counted, axis=1) / np.arange(1, hits.shape[1] + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(precision_at_i * counted, axis=1) / np.where(relevant > 0, relevant, np.nan)


def _precision_at_r(hits, relevant):
    """Share of relevant items among the first R neighbours per query (nan where R = 0)."""
    within_r = np.arange(hits.shape[1]) < relevant[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(hits & within_r, axis=1) / np.where(relevant > 0, relevant, np.nan)


def _mean_over_relevant(per_query, neighbor_labels, query_labels, relevant_counts):
    neighbor_labels = np.asarray(neighbor_labels)
    relevant = np.asarray(relevant_counts)
    if relevant.max(initial=0) > neighbor_labels.shape[1]:
        raise ValueError(f"R = {relevant.max()} needs as many neighbours, got {neighbor_labels.shape[1]}")
    hits = neighbor_labels == np.asarray(query_labels)[:, None]
    return _nanmean(per_query(hits, relevant))


def _nanmean(values):
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if len(kept) else float("nan")


def _as_matrix(x, name):
    """C-contiguous float32 [N, D] (no copy when it already is one); rejects NaN/inf."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{name} must be a non-empty [N, D] matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return x


def _check_pair(query, gallery, same_rows):
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(f"query and gallery dimensions differ: {query.shape[1]} vs {gallery.shape[1]}")
    if same_rows and len(query) != len(gallery):
        raise ValueError("excluding self needs the query rows to be the gallery rows")


def _check_labels(features, labels, name):
    if labels.shape != (len(features),):
        raise ValueError(f"{name}: {len(features)} rows but labels of shape {labels.shape}")


def _l2_normalized(x):
    """Rows scaled to unit length (a zero row stays zero).

    Each row is first divided by its largest magnitude, so that squaring cannot overflow float32
    even for huge embeddings; the row maxima and einsum avoid any temporary of x's full size.
    """
    peak = np.maximum(x.max(axis=1), -x.min(axis=1))
    out = x / np.maximum(peak, np.finfo(np.float32).tiny)[:, None]
    out /= np.maximum(np.sqrt(np.einsum("ij,ij->i", out, out)), 1e-12)[:, None]
    return out
