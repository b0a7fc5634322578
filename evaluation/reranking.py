"""k-reciprocal re-ranking (Zhong, Zheng, Cao, Li: "Re-ranking Person Re-identification with
k-reciprocal Encoding", CVPR 2017), in memory that grows linearly with the number of images.

Definition: what the authors' released code computes (the re_ranking function that
reid-strong-baseline ships and ReID papers report), on the pool P of all query and gallery images
(the probes take part in each other's neighbourhoods):

- d(i, j): squared Euclidean distance between the (L2-normalised, with feat_norm) embeddings,
  divided by the largest squared distance from i to any image of the pool (the authors divide
  each column of the pool x pool matrix by its maximum, then transpose it), so d(i, .) lies in
  [0, 1]; d is not symmetric.
- N(i, k): i itself and its k nearest other images (ties by index).
- R(i, k) = {j in N(i, k) : i in N(j, k)}: the k-reciprocal neighbours (i included).
- R*(i, k1) = R(i, k1) together with every R(q, k1/2), q in R(i, k1), that shares more than
  2/3 of its members with R(i, k1) (k1/2 rounded half to even, as numpy's around).
- V_i: a vector over the pool, V_i[j] = exp(-d(i, j)) for j in R*(i, k1), 0 elsewhere,
  normalised to sum 1.
- Local query expansion: V_i is replaced by the mean of V_t over the k2 images t
  nearest to i, i itself included (k2 = 1: no expansion); the rows still sum to 1.
- Jaccard distance d_J(i, j) = 1 - m / (2 - m), m = sum_c min(V_i[c], V_j[c]) (the same as
  1 - sum min / sum max, the vectors summing to 1).
- Final distance d*(q, g) = (1 - lambda) d_J(q, g) + lambda d(q, g).

Defaults k1 = 20, k2 = 6, lambda = 0.3 are the paper's Market-1501 settings. The authors keep V in
float16; this module computes in float64, so a near tie may fall the other way.

Memory. Nothing of size pool x pool is ever built: the nearest neighbours come from
faiss in blocks (evaluation.distances.nearest_neighbors), the largest distance of each image
from blocks of the pool x pool distances, the vectors V are sparse
(about k2 * |R*| non-zeros per image), and the query x gallery distances are produced a
block of queries at a time, for evaluation.reid.reid_scores(distance_fn=...).
"""
import numpy as np

from evaluation.distances import (as_matrix, check_same_width, l2_normalized, nearest_neighbors,
                                  squared_distance_fn)

# Pairs whose distance is computed at once when weighting R* (2 x D floats each).
_PAIR_CHUNK = 4096
# Entries gathered at once when intersecting a block of query vectors with the gallery's.
_GATHER_CHUNK = 4_000_000
# Pool x pool distances computed at once when finding each image's largest distance (float32 each).
_DISTANCE_CELLS = 16 * 2**20


class KReciprocalReranker:
    """Re-ranked query x gallery distances, block by block: reranker(start, stop) -> [stop - start, Ng].

    Building it does the pool-wide work (neighbours, k-reciprocal sets, the sparse
    vectors V); each call then costs one block of queries against the gallery.
    With gallery_features None the pool is the query images alone, each ranked against
    all of them (leave-one-out retrieval; the caller drops each query's own column).
    """

    def __init__(self, query_features, gallery_features, k1=20, k2=6, lambda_value=0.3, feat_norm=True):
        query = as_matrix(query_features, "query features")
        one_pool = gallery_features is None
        gallery = query if one_pool else as_matrix(gallery_features, "gallery features")
        check_same_width(query, gallery)
        if k1 < 1 or k2 < 1 or not 0 <= lambda_value <= 1:
            raise ValueError(f"need k1 >= 1, k2 >= 1 and 0 <= lambda <= 1, got {k1}, {k2}, {lambda_value}")
        pool = query if one_pool else np.concatenate([query, gallery])
        if feat_norm:
            pool = l2_normalized(pool)
        self.num_query, self.num_gallery = len(query), len(gallery)
        self.lambda_value = lambda_value
        # With fewer images than k1 + 1, every image is everyone's neighbour.
        self.k1 = min(k1, len(pool) - 1)
        self.k2 = min(k2, len(pool))
        k_half = min(int(np.around(k1 / 2)), self.k1)

        self.scale = _largest_distances(pool)
        neighbors = _neighbor_table(pool, self.k1)
        expanded = _expanded_reciprocal_sets(neighbors, self.k1, k_half)
        vectors = _weighted_vectors(pool, expanded, self.scale)
        vectors = _query_expansion(vectors, neighbors[:, :self.k2])
        self.query_vectors = vectors[:self.num_query]
        first_gallery = 0 if one_pool else self.num_query
        # Column c of the gallery vectors as a row: the gallery images whose vector uses c.
        self.gallery_by_column = vectors[first_gallery:].T.tocsr()
        self.original = squared_distance_fn(pool[:self.num_query], pool[first_gallery:], feat_norm=False)

    def __call__(self, start, stop):
        original = self.original(start, stop).astype(np.float64) / self.scale[start:stop, None]
        jaccard = self.jaccard(start, stop)
        return (1 - self.lambda_value) * jaccard + self.lambda_value * original

    def jaccard(self, start, stop):
        """Jaccard distances [stop - start, Ng] between query and gallery vectors."""
        block = self.query_vectors[start:stop]
        overlap = np.zeros((stop - start, self.num_gallery))
        row_of_entry = np.repeat(np.arange(stop - start), np.diff(block.indptr))
        columns = self.gallery_by_column
        lengths = columns.indptr[block.indices + 1] - columns.indptr[block.indices]
        # Intersect in chunks of query entries so the gathered arrays stay bounded.
        ends = np.cumsum(lengths)
        first = 0
        while first < len(lengths):
            last = max(first + 1, int(np.searchsorted(ends, ends[first] - lengths[first] + _GATHER_CHUNK, "right")))
            chunk = slice(first, last)
            counts = lengths[chunk]
            flat = np.repeat(columns.indptr[block.indices[chunk]] - np.cumsum(counts) + counts, counts)
            flat += np.arange(counts.sum())
            smaller = np.minimum(np.repeat(block.data[chunk], counts), columns.data[flat])
            cells = np.repeat(row_of_entry[chunk] * self.num_gallery, counts) + columns.indices[flat]
            overlap += np.bincount(cells, weights=smaller, minlength=overlap.size).reshape(overlap.shape)
            first = last
        return 1.0 - overlap / (2.0 - overlap)


def re_rank(query_features, gallery_features, k1=20, k2=6, lambda_value=0.3, feat_norm=True):
    """The whole re-ranked query x gallery distance matrix (small sets; eval uses the blocks)."""
    reranker = KReciprocalReranker(query_features, gallery_features, k1, k2, lambda_value, feat_norm)
    return reranker(0, reranker.num_query)


def _largest_distances(pool):
    """[N] float64: the largest squared distance from each image to the pool (1 where all are 0)."""
    distances = squared_distance_fn(pool, pool, feat_norm=False)
    rows = max(1, _DISTANCE_CELLS // len(pool))
    largest = np.concatenate([distances(start, min(start + rows, len(pool))).max(axis=1)
                              for start in range(0, len(pool), rows)]).astype(np.float64)
    return np.where(largest > 0, largest, 1.0)  # an image equal to every other: any scale will do


def _neighbor_table(pool, k):
    """[N, k + 1]: each image itself, then its k nearest others (ties by index)."""
    if k == 0:
        return np.arange(len(pool))[:, None]
    others, _ = nearest_neighbors(pool, pool, k, exclude_self=True, feat_norm=False)
    return np.hstack([np.arange(len(pool))[:, None], others])


def _reciprocal_sets(neighbors, k, rows=4096):
    """R(i, k) for every i, as Python sets (each holds i itself)."""
    table = neighbors[:, :k + 1]
    sets = []
    for start in range(0, len(table), rows):
        block = table[start:start + rows]
        own = np.arange(start, start + len(block))
        # Is i among the k + 1 entries of each of its own neighbours?
        back = (table[block] == own[:, None, None]).any(axis=2)
        sets.extend(set(row[keep].tolist()) for row, keep in zip(block, back))
    return sets


def _expanded_reciprocal_sets(neighbors, k1, k_half):
    """R*(i, k1): R(i, k1) plus the R(q, k_half) that share more than 2/3 of their members with it."""
    full, half = _reciprocal_sets(neighbors, k1), _reciprocal_sets(neighbors, k_half)
    expanded = []
    for members in full:
        grown = set(members)
        for q in members:
            candidate = half[q]
            if 3 * len(candidate & members) > 2 * len(candidate):
                grown |= candidate
        expanded.append(np.fromiter(sorted(grown), np.int64, len(grown)))
    return expanded


def _weighted_vectors(pool, expanded, scale):
    """Sparse [N, N] V with V[i, j] = exp(-d(i, j)) for j in R*(i), each row normalised to sum 1."""
    rows = np.repeat(np.arange(len(expanded)), [len(members) for members in expanded])
    cols = np.concatenate(expanded)
    weights = np.empty(len(rows))
    for start in range(0, len(rows), _PAIR_CHUNK):
        i, j = rows[start:start + _PAIR_CHUNK], cols[start:start + _PAIR_CHUNK]
        difference = pool[i] - pool[j]
        weights[start:start + _PAIR_CHUNK] = np.einsum("ij,ij->i", difference, difference)
    weights = np.exp(-weights / scale[rows])
    weights /= np.bincount(rows, weights=weights, minlength=len(pool))[rows]
    from scipy import sparse  # here: search.py and serve.py start without it unless they re-rank

    return sparse.csr_matrix((weights, (rows, cols)), shape=(len(pool), len(pool)))


def _query_expansion(vectors, nearest):
    """Each row replaced by the mean of the rows of its k2 nearest images (itself included)."""
    if nearest.shape[1] == 1:
        return vectors
    from scipy import sparse

    count = len(nearest)
    averaging = sparse.csr_matrix((np.full(nearest.size, 1.0 / nearest.shape[1]),
                                   (np.repeat(np.arange(count), nearest.shape[1]), nearest.ravel())),
                                  shape=(count, count))
    return (averaging @ vectors).tocsr()
