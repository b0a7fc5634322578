"""Brute-force references and clustered embeddings for the evaluation tests."""
import numpy as np


def brute_force_neighbors(query, gallery, exclude_self, feat_norm):
    """Full float64 distance matrix, stable argsort: ties go to the smaller gallery index."""
    query, gallery = query.astype(np.float64), gallery.astype(np.float64)
    if feat_norm:
        query = query / np.linalg.norm(query, axis=1, keepdims=True)
        gallery = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    distances = ((query[:, None, :] - gallery[None, :, :]) ** 2).sum(axis=2)
    if exclude_self:
        np.fill_diagonal(distances, np.inf)
    order = np.argsort(distances, axis=1, kind="stable")
    return order, np.take_along_axis(distances, order, axis=1)


def map_at_r_from_definition(query_labels, ranked_gallery_labels):
    """Musgrave et al. 2020, one query at a time: AP@R = 1/R * sum_{i<=R} P(i) * rel(i)."""
    scores = []
    for label, ranked in zip(query_labels, ranked_gallery_labels):
        r = int(np.sum(ranked == label))
        if r == 0:
            continue
        relevant_seen, total = 0, 0.0
        for i in range(1, r + 1):
            if ranked[i - 1] == label:
                relevant_seen += 1
                total += relevant_seen / i
        scores.append(total / r)
    return float(np.mean(scores))


def clustered(rng, num_classes, per_class, dim, spread):
    centers = rng.standard_normal((num_classes, dim))
    labels = np.repeat(np.arange(num_classes), per_class)
    features = centers[labels] + spread * rng.standard_normal((len(labels), dim))
    return features.astype(np.float32), labels


def fake_reid(seed, num_ids=12, per_id=6, num_cams=4, dim=8, junk=6, distractors=5, queries_per_id=2):
    """Clustered embeddings with cameras, junk (-1) and distractors (0) in the gallery."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_ids + 1, dim))
    q, qi, qc, g, gi, gc = [], [], [], [], [], []
    for pid in range(1, num_ids + 1):
        for k in range(per_id):
            g.append(centres[pid] + rng.normal(scale=0.9, size=dim))
            gi.append(pid)
            gc.append(int(rng.integers(1, num_cams + 1)))
        for k in range(queries_per_id):
            q.append(centres[pid] + rng.normal(scale=0.9, size=dim))
            qi.append(pid)
            qc.append(int(rng.integers(1, num_cams + 1)))
    for label, count in ((-1, junk), (0, distractors)):
        for k in range(count):
            g.append(rng.normal(size=dim) * 1.5)
            gi.append(label)
            gc.append(int(rng.integers(1, num_cams + 1)))
    as_arrays = lambda f, i, c: (np.array(f, np.float32), np.array(i), np.array(c))  # noqa: E731
    return as_arrays(q, qi, qc) + as_arrays(g, gi, gc)
