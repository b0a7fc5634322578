"""Embedding checks, normalisation, exact nearest neighbours and squared distances, block by block.

The one home of what the metrics (metrics.py, reid.py, reranking.py, threshold.py) share. No Paddle.

Distance. Squared Euclidean, computed in float32; with feat_norm the embeddings are L2-normalised
first, so that the ranking is the cosine ranking (squared distance 2 - 2 cos).

Ties. Neighbours at equal computed distance are ordered by gallery index, smallest first,
including at the K-th place: results are deterministic.

Scale. Exact nearest neighbours come from faiss's brute-force search (faiss.knn: blocked matrix
products feeding a top-k heap, never an N x N matrix), called a block of queries at a time so that
the neighbours held at once stay under BLOCK_BYTES. It measured as fast as or faster than a numpy
matmul + np.partition version (bench/bench_knn.py).
"""
import faiss
import numpy as np

BLOCK_BYTES = 256 * 2**20
# Per neighbour of a query in a block: faiss's heap (float32 + int64), the returned copies, the
# self-less copies and what the caller derives from them (hits, labels).
_BYTES_PER_NEIGHBOR = 64


def as_matrix(x, name):
    """C-contiguous float32 [N, D] (no copy when it already is one); rejects NaN/inf."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{name} must be a non-empty [N, D] matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return x


def check_same_width(query, gallery):
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(f"query and gallery dimensions differ: {query.shape[1]} vs {gallery.shape[1]}")


def l2_normalized(x):
    """Rows scaled to unit length (a zero row stays zero).

    Each row is first divided by its largest magnitude, so that squaring cannot overflow float32
    even for huge embeddings; the row maxima and einsum avoid any temporary of x's full size.
    """
    peak = np.maximum(x.max(axis=1), -x.min(axis=1))
    out = x / np.maximum(peak, np.finfo(np.float32).tiny)[:, None]
    out /= np.maximum(np.sqrt(np.einsum("ij,ij->i", out, out)), 1e-12)[:, None]
    return out


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
    query, gallery = as_matrix(query, "query"), as_matrix(gallery, "gallery")
    candidates = len(gallery) - int(exclude_self)
    if not 1 <= k <= candidates:
        raise ValueError(f"k must be between 1 and {candidates} (the gallery size), got {k}")
    indices = np.empty((len(query), k), np.int64)
    distances = np.empty((len(query), k), np.float32)
    for start, block_indices, block_distances in neighbor_blocks(
            query, gallery, np.full(len(query), k), exclude_self, feat_norm, block_rows):
        stop = start + len(block_indices)
        indices[start:stop] = block_indices
        distances[start:stop] = block_distances
    return indices, distances


def neighbor_blocks(query, gallery, wanted, exclude_self=False, feat_norm=True, block_rows=None,
                    gallery_offsets=None):
    """Yield (first query row, indices, distances) per block of queries, as nearest_neighbors returns them.

    wanted[i] is how many neighbours query i needs; a block returns the largest number its
    queries need (at most the gallery size, less one with exclude_self). gallery_offsets [Ng] (>= 0):
    added to every squared distance to that gallery row, so that they rank by d^2 + offset.
    """
    query, gallery = as_matrix(query, "query"), as_matrix(gallery, "gallery")
    check_same_width(query, gallery)
    if exclude_self and len(query) != len(gallery):
        raise ValueError("excluding self needs the query rows to be the gallery rows")
    if feat_norm:
        gallery = l2_normalized(gallery)
        query = gallery if exclude_self else l2_normalized(query)
    if gallery_offsets is not None:
        # One more coordinate, sqrt(offset) for the gallery and 0 for the queries: |q - g|^2 + offset exactly.
        offsets = np.sqrt(np.asarray(gallery_offsets, np.float32))[:, None]
        gallery = np.hstack([gallery, offsets])
        query = np.hstack([query, np.zeros((len(query), 1), np.float32)])
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


def squared_distance_fn(query_features, gallery_features, feat_norm=True):
    """A distance_fn(start, stop) -> float32 [stop - start, Ng] squared Euclidean distances.

    With feat_norm the embeddings are L2-normalised first (once, here).
    """
    query = as_matrix(query_features, "query features")
    gallery = as_matrix(gallery_features, "gallery features")
    check_same_width(query, gallery)
    if feat_norm:
        query, gallery = l2_normalized(query), l2_normalized(gallery)
    gallery_norms = np.einsum("ij,ij->i", gallery, gallery)

    def distances(start, stop):
        block = query[start:stop]
        block_norms = np.einsum("ij,ij->i", block, block)
        out = block @ gallery.T
        out *= -2.0
        out += block_norms[:, None]
        out += gallery_norms[None, :]
        return np.maximum(out, 0.0, out=out)

    return distances


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
