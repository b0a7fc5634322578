"""An evaluator of named metrics: Evaluator(metrics=[...])(gallery, labels, ...) -> {figure: value}.

    from evaluation.evaluator import Evaluator
    Evaluator(["recall_at_k", "map_at_r"], ks=(1, 5))(features, labels)
    # {"recall@1": ..., "recall@5": ..., "map@r": ..., "num_queries": ..., "num_lone_queries": ...}

Every row of the gallery is a query against the others (leave-one-out), or query rows are searched
against the gallery. An Evaluation holds the embeddings, the settings and the work that several
metrics share, each part computed once, when the first metric reads it:
- `neighbors`: the NeighborTable of the retrieval metrics (which nearest gallery items share each
  query's label, to the depth Recall@K and MAP@R need), after the settings' post-processing
  (database augmentation, query expansion, re-ranking: evaluation/postprocess.py);
- `reid`: per-query AP and first good match under the re-identification protocol (cameras and
  junk, evaluation/reid.py), on k-reciprocal re-ranked distances with `re_ranking`;
- `verification`: the distance threshold over all pairs (evaluation/threshold.py).

A metric is a function of the Evaluation returning a dict of figures, listed in METRICS under its
name. Adding one is writing that function and adding one line to METRICS.
"""
from dataclasses import dataclass
from functools import cached_property
from typing import Optional

import numpy as np

from evaluation import fewshot, metrics, reid, threshold
from evaluation.distances import as_matrix, check_same_width, l2_normalized, neighbor_blocks, squared_distance_fn
from evaluation.postprocess import Expansion, PostProcessing, ranked_blocks
from evaluation.reranking import KReciprocalReranker

RETRIEVAL_METRICS = ("recall_at_k", "map_at_r", "r_precision", "nmi")
REID_METRICS = ("map", "cmc")


@dataclass(frozen=True)
class Settings:
    ks: tuple = (1, 2, 4, 8)        # the K of Recall@K
    feat_norm: bool = True          # L2-normalise the embeddings first (cosine ranking)
    seed: int = 0                   # k-means of NMI
    confused_pairs: int = 5         # how many pairs confused_pairs names
    block_rows: Optional[int] = None  # queries per block of neighbour search (default: memory-bounded)
    re_ranking: bool = False        # rank by k-reciprocal re-ranked distances (ReID and retrieval metrics)
    query_expansion: Optional[Expansion] = None        # alpha-QE before the retrieval metrics
    database_augmentation: Optional[Expansion] = None  # DBA before the retrieval metrics
    few_shot: Optional[fewshot.FewShotTask] = None      # the episodes of the few_shot metric
    max_rank: int = 10              # CMC up to this rank
    ignore_labels: tuple = ()       # labels that take part in no verification pair (ReID junk, distractors)


@dataclass(frozen=True)
class NeighborTable:
    """What the retrieval metrics read: built once per evaluation, one byte per (query, neighbour)."""
    hits: np.ndarray            # bool [Nq, depth]: the j-th nearest gallery item shares query i's label
    relevant: np.ndarray        # [Nq] R: gallery items sharing the query's label (itself excluded)
    first_labels: np.ndarray    # [Nq] the label of each query's nearest gallery item
    candidates: int             # gallery items each query is ranked against


class Evaluation:
    """The evaluated embeddings and settings; the shared work is done on first use, once."""

    def __init__(self, gallery, gallery_labels, query=None, query_labels=None, gallery_cameras=None,
                 query_cameras=None, settings=Settings(), gallery_groups=None, gallery_offsets=None,
                 gallery_drawers=None):
        self.gallery = as_matrix(gallery, "features")
        self.gallery_labels = _labels(gallery_labels, self.gallery, "features")
        self.leave_one_out = query is None
        self.query = self.gallery if self.leave_one_out else as_matrix(query, "query features")
        self.query_labels = self.gallery_labels if self.leave_one_out else \
            _labels(query_labels, self.query, "query features")
        check_same_width(self.query, self.gallery)
        self.gallery_cameras, self.query_cameras = gallery_cameras, query_cameras
        self.gallery_groups = gallery_groups  # per gallery row, for within-group few-shot episodes
        self.gallery_drawers = gallery_drawers  # per gallery row, for paired-drawer few-shot episodes
        self.settings = settings
        # Per gallery row, added to its squared distance to every query before ranking (e.g. K sigma^2 of an
        # uncertainty weight: a term of the query alone would change no ranking). Not with post-processing.
        self.gallery_offsets = None if gallery_offsets is None else np.asarray(gallery_offsets, np.float32)
        if self.gallery_offsets is not None:
            if self.gallery_offsets.shape != (len(self.gallery),) or not np.all(self.gallery_offsets >= 0):
                raise ValueError(f"gallery_offsets must be {len(self.gallery)} numbers >= 0")
            if self.post_processing:
                raise ValueError("gallery offsets rank by plain distances: not with post-processing")

    @cached_property
    def neighbors(self):
        candidates = len(self.gallery) - int(self.leave_one_out)
        if candidates < 1:
            raise ValueError("leave-one-out evaluation needs at least 2 embeddings")
        if min(self.settings.ks) < 1:
            raise ValueError(f"K must be positive, got {list(self.settings.ks)}")
        relevant = metrics.relevant_counts(self.query_labels, self.gallery_labels, self.leave_one_out)
        wanted = np.maximum(min(max(self.settings.ks), candidates), relevant)
        hits = np.zeros((len(self.query), int(wanted.max())), bool)
        first_labels = np.empty(len(self.query), self.gallery_labels.dtype)
        if self.gallery_offsets is None:
            blocks = ranked_blocks(self.query, self.gallery, wanted, self.leave_one_out, self.settings.feat_norm,
                                   self.post_processing, self.settings.block_rows)
        else:  # (never with post-processing)
            blocks = neighbor_blocks(self.query, self.gallery, wanted, self.leave_one_out, self.settings.feat_norm,
                                     self.settings.block_rows, self.gallery_offsets)
        for start, indices, _ in blocks:
            rows = slice(start, start + len(indices))
            hits[rows, :indices.shape[1]] = self.gallery_labels[indices] == self.query_labels[rows, None]
            first_labels[rows] = self.gallery_labels[indices[:, 0]]
        return NeighborTable(hits, relevant, first_labels, candidates)

    @property
    def post_processing(self):
        return PostProcessing(self.settings.database_augmentation, self.settings.query_expansion,
                              self.settings.re_ranking)

    @cached_property
    def reid(self):
        """(AP, rank of the first good match) per query, as evaluation.reid.reid_scores returns them."""
        if self.leave_one_out or self.query_cameras is None or self.gallery_cameras is None:
            raise ValueError("re-identification metrics need a query set, a gallery and their cameras")
        distance_fn = KReciprocalReranker(self.query, self.gallery, feat_norm=self.settings.feat_norm) \
            if self.settings.re_ranking else None
        if self.gallery_offsets is not None:
            plain = squared_distance_fn(self.query, self.gallery, self.settings.feat_norm)

            def distance_fn(start, stop):
                return plain(start, stop) + self.gallery_offsets
        return reid.reid_scores(self.query, self.query_labels, self.query_cameras, self.gallery,
                                self.gallery_labels, self.gallery_cameras, feat_norm=self.settings.feat_norm,
                                distance_fn=distance_fn)

    @cached_property
    def verification(self):
        """evaluation.threshold.verification_threshold over all pairs of the query and gallery rows."""
        features, labels = self.gallery, self.gallery_labels
        if not self.leave_one_out:
            features, labels = np.concatenate([self.query, self.gallery]), np.concatenate([self.query_labels, labels])
        return threshold.verification_threshold(features, labels, feat_norm=self.settings.feat_norm,
                                                ignore_labels=self.settings.ignore_labels)

    def counts(self):
        """How many queries were evaluated, and (for the parts computed) how many were left out."""
        found = {"num_queries": len(self.query)}
        if "neighbors" in self.__dict__:  # (a cached_property, once computed, is in the instance's __dict__)
            found["num_lone_queries"] = int(np.sum(self.neighbors.relevant == 0))
            if self.post_processing:
                found["post_processing"] = self.post_processing.describe()
        if "reid" in self.__dict__:
            found.update(reid.query_counts(self.reid[0]), re_ranking=self.settings.re_ranking)
        return found


# --- the metrics: each reads the shared parts of an Evaluation --------------------------------

def recall_at_k(evaluation):
    """Recall@K for each K of the settings (K beyond the gallery: the whole gallery)."""
    table = evaluation.neighbors
    ranks = metrics.first_hit_ranks(table.hits)
    return {f"recall@{k}": float(np.mean(ranks <= min(k, table.candidates))) for k in evaluation.settings.ks}


def map_at_r(evaluation):
    return {"map@r": metrics.map_at_r(evaluation.neighbors.hits, evaluation.neighbors.relevant)}


def r_precision(evaluation):
    return {"r_precision": metrics.r_precision(evaluation.neighbors.hits, evaluation.neighbors.relevant)}


def nmi(evaluation):
    """NMI of k-means on the gallery (normalised with feat_norm)."""
    gallery = l2_normalized(evaluation.gallery) if evaluation.settings.feat_norm else evaluation.gallery
    return {"nmi": metrics.nmi(gallery, evaluation.gallery_labels, evaluation.settings.seed)}


def confused_pairs(evaluation):
    return {"confused_pairs": metrics.most_confused_pairs(evaluation.query_labels, evaluation.neighbors.first_labels,
                                                          evaluation.settings.confused_pairs)}


def few_shot(evaluation):
    """Episodic W-way K-shot error on the gallery (evaluation/fewshot.py), the task of the settings."""
    if evaluation.settings.few_shot is None:
        raise ValueError("few_shot needs the episodes' task: Settings(few_shot=FewShotTask(...))")
    return fewshot.few_shot_error(evaluation.gallery, evaluation.gallery_labels, evaluation.settings.few_shot,
                                  evaluation.gallery_groups, evaluation.settings.feat_norm,
                                  evaluation.gallery_drawers)


def reid_map(evaluation):
    return {"map": reid.mean_average_precision(evaluation.reid[0])}


def reid_cmc(evaluation):
    return reid.cmc(*evaluation.reid, evaluation.settings.max_rank)


def verification_threshold(evaluation):
    found = evaluation.verification
    return {"threshold": found["threshold"], "threshold_accuracy": found["accuracy"],
            "tpr@fpr1e-3": found["tpr_at_fpr"], "num_positive_pairs": found["num_positive_pairs"],
            "num_negative_pairs": found["num_negative_pairs"]}


METRICS = {
    "recall_at_k": recall_at_k,
    "map_at_r": map_at_r,
    "r_precision": r_precision,
    "nmi": nmi,
    "confused_pairs": confused_pairs,
    "few_shot": few_shot,
    "map": reid_map,
    "cmc": reid_cmc,
    "threshold": verification_threshold,
}


class Evaluator:
    """The named metrics with one set of settings: a callable from embeddings to {figure: value}."""

    def __init__(self, metrics=RETRIEVAL_METRICS, **settings):
        unknown = [name for name in metrics if name not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRICS)}")
        self.metrics = tuple(metrics)
        self.settings = Settings(**settings)

    def __call__(self, gallery, gallery_labels, query=None, query_labels=None, gallery_cameras=None,
                 query_cameras=None, gallery_groups=None):
        """The figures of every metric, leave-one-out without a query set, then the query counts."""
        return self.evaluate(Evaluation(gallery, gallery_labels, query, query_labels, gallery_cameras,
                                        query_cameras, self.settings, gallery_groups))

    def evaluate(self, evaluation):
        """The figures of an Evaluation built by the caller (who may read its shared parts afterwards)."""
        results = {}
        for name in self.metrics:
            results.update(METRICS[name](evaluation))
        return {**results, **evaluation.counts()}


def _labels(labels, features, name):
    labels = np.asarray(labels)
    if labels.shape != (len(features),):
        raise ValueError(f"{name}: {len(features)} rows but labels of shape {labels.shape}")
    return labels
