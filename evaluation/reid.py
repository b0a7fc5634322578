"""Person re-identification metrics: mAP and CMC under the Market-1501 protocol.

Protocol (as the official Market-1501 evaluation and its DukeMTMC-reID copy define it):
- Every query is searched against the whole gallery, ranked by distance.
- For a query of identity P seen by camera C, gallery images of identity P
  taken by camera C are junk: the same person in the same view is too easy
  a match. Gallery images labelled -1 (Market-1501's "junk" detections,
  neither a good nor a bad box) are junk for every query. Junk images are
  removed from the ranking before anything is counted: they neither help
  nor hurt.
- The correct matches ("good") are the gallery images of identity P taken
  by another camera. Everything else, including the distractors labelled 0
  (false detections in Market-1501), is a wrong match.
- A query with no good image in the gallery (its identity appears nowhere
  else, or only under its own camera, or it is itself labelled -1) is left
  out of mAP and CMC and counted in num_skipped_queries.

Metrics, over the valid queries:
- CMC@k: share of queries whose first good match is among the first k
  images of the junk-free ranking.
- mAP: mean of AP, AP = mean over the query's good images of the precision
  at the rank where each one appears (non-interpolated AP, as
  reid-strong-baseline and torchreid compute it; the official Market-1501
  MATLAB code averages the precision just before and at each hit instead,
  which can differ in the third decimal).

Distance. Squared Euclidean distance between the embeddings, L2-normalised
first when feat_norm is True (evaluation/distances.py); or any
query x gallery distance given by distance_fn (e.g. re-ranked distances).

Ties. Gallery images at equal distance are ranked by gallery index,
smallest first (a stable sort): the result is deterministic.

Scale. Queries are processed in blocks: a block of queries x the whole
gallery is ranked at a time and never the full query x gallery matrix; the
default block keeps that work under BLOCK_BYTES (about 200 queries for a
20,000-image gallery).
"""
import numpy as np

from evaluation.distances import as_matrix, check_same_width, squared_distance_fn

JUNK_ID = -1  # gallery images with this identity are ignored for every query
BLOCK_BYTES = 256 * 2**20
# Per (query, gallery) cell of a block: distance, sort order, gathered ids and
# cameras, three masks, two int32 running counts and the float precisions.
_BYTES_PER_CELL = 56
REPORTED_RANKS = (1, 5, 10)


def reid_metrics(query_features, query_ids, query_cams, gallery_features, gallery_ids, gallery_cams,
                 max_rank=10, block_size=None, feat_norm=True, distance_fn=None):
    """mAP and CMC of a query set against a gallery, with camera and junk exclusion.

    Arguments as for reid_scores; max_rank: CMC is reported at ranks 1, 5, 10 up to max_rank
    (and at max_rank).

    Returns:
        {"map": ..., "cmc@1": ..., "cmc@5": ..., "cmc@10": ..., "num_valid_queries": ...,
         "num_skipped_queries": ..., "num_queries": ...}; map and cmc@k are nan when no
        query is valid.
    """
    average_precision, first_hit = reid_scores(query_features, query_ids, query_cams, gallery_features,
                                               gallery_ids, gallery_cams, block_size, feat_norm, distance_fn)
    return {"map": mean_average_precision(average_precision), **cmc(average_precision, first_hit, max_rank),
            **query_counts(average_precision)}


def reid_scores(query_features, query_ids, query_cams, gallery_features, gallery_ids, gallery_cams,
                block_size=None, feat_norm=True, distance_fn=None):
    """Per query: AP (nan for a query without a good match) and the 1-based rank of its first good match (inf).

    Args:
        query_features, gallery_features: [Nq, D] and [Ng, D] embeddings.
        query_ids, gallery_ids: integer identities; gallery -1 is junk.
        query_cams, gallery_cams: integer camera ids.
        block_size: queries per block; default keeps a block under BLOCK_BYTES.
        feat_norm: L2-normalise before the Euclidean distance.
        distance_fn: optional f(start, stop) -> [stop - start, Ng] distances of
            queries start..stop-1 to every gallery image, smaller = closer; replaces
            the Euclidean distance (the features then only fix the sizes).
    """
    query = as_matrix(query_features, "query features")
    gallery = as_matrix(gallery_features, "gallery features")
    query_ids, query_cams = _ids(query_ids, query, "query ids"), _ids(query_cams, query, "query cameras")
    gallery_ids = _ids(gallery_ids, gallery, "gallery ids")
    gallery_cams = _ids(gallery_cams, gallery, "gallery cameras")
    check_same_width(query, gallery)
    if distance_fn is None:
        distance_fn = squared_distance_fn(query, gallery, feat_norm)
    rows = block_size or max(1, int(BLOCK_BYTES // (len(gallery) * _BYTES_PER_CELL)))

    average_precision = np.full(len(query), np.nan)
    first_hit = np.full(len(query), np.inf)
    for start in range(0, len(query), rows):
        stop = min(start + rows, len(query))
        distances = np.asarray(distance_fn(start, stop))
        if distances.shape != (stop - start, len(gallery)):
            raise ValueError(f"distance_fn returned shape {distances.shape}, "
                             f"expected {(stop - start, len(gallery))}")
        ap, rank = _score_block(distances, query_ids[start:stop], query_cams[start:stop],
                                gallery_ids, gallery_cams)
        average_precision[start:stop], first_hit[start:stop] = ap, rank
    return average_precision, first_hit


def mean_average_precision(average_precision):
    """mAP over the valid queries (AP not nan); nan when none is valid."""
    valid = ~np.isnan(average_precision)
    return float(average_precision[valid].mean()) if valid.any() else float("nan")


def cmc(average_precision, first_hit, max_rank=10):
    """{"cmc@k": share of valid queries whose first good match is within the top k} at ranks 1, 5, 10
    up to max_rank, and at max_rank; nan when no query is valid."""
    if max_rank < 1:
        raise ValueError(f"max_rank must be positive, got {max_rank}")
    valid = ~np.isnan(average_precision)
    return {f"cmc@{k}": float(np.mean(first_hit[valid] <= k)) if valid.any() else float("nan")
            for k in sorted({k for k in REPORTED_RANKS if k <= max_rank} | {max_rank})}


def query_counts(average_precision):
    valid = int(np.sum(~np.isnan(average_precision)))
    return {"num_valid_queries": valid, "num_skipped_queries": len(average_precision) - valid,
            "num_queries": len(average_precision)}


def _score_block(distances, query_ids, query_cams, gallery_ids, gallery_cams):
    """AP (nan for a query without a good match) and 1-based rank of the first good match (inf)."""
    order = np.argsort(distances, axis=1, kind="stable")
    ranked_ids = gallery_ids[order]
    same_identity = ranked_ids == query_ids[:, None]
    junk = (ranked_ids == JUNK_ID) | (same_identity & (gallery_cams[order] == query_cams[:, None]))
    good = same_identity & ~junk
    del order, ranked_ids, same_identity
    # Position of each image in the junk-free ranking, and good images seen so far.
    kept_rank = np.cumsum(~junk, axis=1, dtype=np.int32)
    hits = np.cumsum(good, axis=1, dtype=np.int32)
    num_good = hits[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision_sum = np.sum(np.where(good, hits / np.maximum(kept_rank, 1), 0.0), axis=1)
        ap = np.where(num_good > 0, precision_sum / num_good, np.nan)
    first = kept_rank[np.arange(len(good)), np.argmax(good, axis=1)]
    rank = np.where(num_good > 0, first, np.inf)
    return ap, rank


def _ids(values, features, name):
    values = np.asarray(values)
    if values.shape != (len(features),):
        raise ValueError(f"{name}: expected {len(features)} values, got shape {values.shape}")
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got {values.dtype}")
    return values.astype(np.int64, copy=False)
