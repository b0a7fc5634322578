"""Retrieval post-processing: database-side augmentation, alpha query expansion, k-reciprocal re-ranking.

What retrieval systems apply between the embedding and the ranked list (Radenovic, Tolias, Chum:
"Fine-tuning CNN Image Retrieval with No Human Annotation", TPAMI 2018, section 5; Zhong et al.
2017 for re-ranking, evaluation/reranking.py). All vectors are L2-normalised and compared by
cosine similarity s(x, y) = x . y.

- alpha-QE (k, alpha): a query q is replaced by q + sum_{i=1..k} w_i d_i, with d_1..d_k its k
  nearest database vectors and w_i = max(0, s(q, d_i)) ** alpha, then L2-normalised again. The
  query's own weight is s(q, q) ** alpha = 1. alpha = 0 gives every vector weight 1: average query
  expansion (Chum et al. 2007). Negative similarities weigh 0 (a fractional power of a negative
  number is undefined; the nearest neighbours of a query are rarely negative).
- DBA (k, alpha): every database vector is replaced the same way by itself and its k nearest other
  database vectors (all computed from the original database), then normalised. Applied before
  query expansion: queries search, and are expanded with, the augmented database.
- Re-ranking: the k-reciprocal distances of evaluation/reranking.py (on the augmented database
  with DBA), for retrieval lists as for re-identification. It expands queries with their
  reciprocal neighbours itself: not combined with alpha-QE.

Leave-one-out evaluation (every image a query against the others): the database is the
evaluation list; a query is its own original vector (DBA is database-side), never its own
neighbour, neither when it is expanded nor when it is ranked. Re-ranking then works on one pool,
the evaluation images, each ranked against all others. A k larger than the database (less the
query) uses all of it.

Memory: neighbours come from evaluation/distances.py's blocked exact search; weights and sums are
computed a chunk of rows at a time; re-ranked distances a block of queries at a time. No N x N matrix.
"""
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from evaluation.distances import as_matrix, l2_normalized, nearest_neighbors, neighbor_blocks
from evaluation.reranking import KReciprocalReranker

# Gathered neighbour vectors held at once when expanding (float32 each).
_GATHER_CELLS = 16 * 2**20
# Re-ranked query x gallery distances held at once (float64 each, with their sort order).
_RERANKED_CELLS = 8 * 2**20


@dataclass(frozen=True)
class Expansion:
    """k nearest neighbours weighted by similarity ** alpha (query expansion or database augmentation)."""
    k: int
    alpha: float

    def __post_init__(self):
        if self.k < 1 or not math.isfinite(self.alpha) or self.alpha < 0:
            raise ValueError(f"need k >= 1 and a finite alpha >= 0, got k={self.k}, alpha={self.alpha}")

    def __str__(self):
        return f"k={self.k} alpha={self.alpha:g}"


def expansions_clash(re_ranking="k-reciprocal re-ranking", query_expansion="query expansion"):
    """Why re-ranking and query expansion are not used together, naming them as the caller's user knows them
    (flags, service fields)."""
    return f"{re_ranking} expands the queries itself: give it or {query_expansion}, not both"


@dataclass(frozen=True)
class PostProcessing:
    database_augmentation: Optional[Expansion] = None
    query_expansion: Optional[Expansion] = None
    re_ranking: bool = False

    def __post_init__(self):
        if self.re_ranking and self.query_expansion:
            raise ValueError(expansions_clash())

    def __bool__(self):
        return bool(self.database_augmentation or self.query_expansion or self.re_ranking)

    def describe(self):
        steps = [f"database augmentation {self.database_augmentation}" if self.database_augmentation else "",
                 f"alpha query expansion {self.query_expansion}" if self.query_expansion else "",
                 "k-reciprocal re-ranking" if self.re_ranking else ""]
        return ", then ".join(step for step in steps if step) or "none"


def ranked_blocks(query, gallery, wanted, leave_one_out, feat_norm, post_processing, block_rows=None):
    """Yield (first query row, indices, distances) per block, as distances.neighbor_blocks does, after post-processing.

    query, gallery: embeddings (the same rows when leave_one_out); wanted[i]: neighbours query i
    needs. Without post-processing this is neighbor_blocks itself. The distances are those ranked by:
    squared distances between unit vectors, or re-ranked distances.
    """
    if not post_processing:
        yield from neighbor_blocks(query, gallery, wanted, leave_one_out, feat_norm, block_rows)
        return
    if (post_processing.database_augmentation or post_processing.query_expansion) and not feat_norm:
        raise ValueError("query expansion and database augmentation weigh neighbours by cosine similarity: "
                         "they need normalised embeddings (feat_norm)")
    gallery = as_matrix(gallery, "gallery")
    query = gallery if leave_one_out else as_matrix(query, "query")
    if feat_norm:
        gallery = l2_normalized(gallery)
        query = gallery if leave_one_out else l2_normalized(query)
    if post_processing.database_augmentation:
        gallery = augment_database(gallery, post_processing.database_augmentation)
    if post_processing.re_ranking:
        yield from _reranked_blocks(query, gallery, wanted, leave_one_out)
        return
    if post_processing.query_expansion:
        query = expand_queries(query, gallery, post_processing.query_expansion, leave_one_out)
    # Unit vectors: squared distances rank as cosine similarity; feat_norm=False keeps the expanded
    # queries (with it, leave-one-out search would take the gallery rows as the queries).
    yield from neighbor_blocks(query, gallery, wanted, leave_one_out, False, block_rows)


def augment_database(database, expansion):
    """DBA: each (unit) database vector and its k nearest others, weighted by similarity ** alpha, normalised."""
    return _expanded(database, database, expansion, exclude_self=True)


def expand_queries(queries, database, expansion, leave_one_out=False):
    """alpha-QE: each (unit) query with its k nearest database vectors (itself excluded when leave_one_out)."""
    return _expanded(queries, database, expansion, exclude_self=leave_one_out)


def _expanded(vectors, database, expansion, exclude_self):
    k = min(expansion.k, len(database) - int(exclude_self))
    if k < 1:
        return vectors
    neighbors, _ = nearest_neighbors(vectors, database, k, exclude_self=exclude_self, feat_norm=False)
    out = np.empty_like(vectors)
    rows = max(1, _GATHER_CELLS // (k * vectors.shape[1]))
    for start in range(0, len(vectors), rows):
        own = vectors[start:start + rows]
        found = database[neighbors[start:start + rows]]                    # [rows, k, D]
        weights = np.maximum(np.einsum("nd,nkd->nk", own, found), 0.0) ** expansion.alpha
        out[start:start + rows] = own + np.einsum("nk,nkd->nd", weights, found)
    return l2_normalized(out)


def _reranked_blocks(query, gallery, wanted, leave_one_out):
    # The embeddings are unit vectors already (or deliberately raw): the reranker takes them as they are.
    reranker = KReciprocalReranker(query, None if leave_one_out else gallery, feat_norm=False)
    rows = max(1, _RERANKED_CELLS // len(gallery))
    for start in range(0, len(query), rows):
        stop = min(start + rows, len(query))
        distances = reranker(start, stop)
        if leave_one_out:
            distances[np.arange(stop - start), np.arange(start, stop)] = np.inf
        depth = int(wanted[start:stop].max())
        order = np.argsort(distances, axis=1, kind="stable")[:, :depth]  # ties by gallery index
        yield start, order, np.take_along_axis(distances, order, axis=1)
