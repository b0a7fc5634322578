"""bench/bench_search_rerank.py: the folds and the figures, on a tiny synthetic dump."""
import importlib.util
import json
from pathlib import Path

import numpy as np

from engine.dump import write_dump

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_search_rerank", REPO / "bench" / "bench_search_rerank.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

CLASSES, PER_CLASS, DIM = 6, 8, 16


def write_synthetic_dump(folder):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(CLASSES), PER_CLASS)
    features = rng.normal(size=(CLASSES, DIM))[labels] + 0.8 * rng.normal(size=(len(labels), DIM))
    order = rng.permutation(len(labels))  # classes interleaved, as list files need not be sorted
    write_dump(str(folder), features[order], labels[order], [f"{i}.png" for i in order], "0" * 16)  # as infer.py
    return features[order] / np.linalg.norm(features[order], axis=1, keepdims=True), labels[order]


def plain_reference(features, labels, folds):
    """Recall@1, precision@10 and MAP@R of exact cosine search, each image against the other folds, by loops."""
    fold = np.zeros(len(labels), int)
    for label in np.unique(labels):
        fold[labels == label] = np.arange(PER_CLASS) % folds
    first, top10, average_precisions = [], [], []
    for i in range(len(labels)):
        others = np.flatnonzero(fold != fold[i])
        ranked = others[np.argsort(-(features[others] @ features[i]), kind="stable")]
        hits = labels[ranked] == labels[i]
        relevant = int(hits.sum())
        first.append(hits[0])
        top10.append(hits[:10].mean())
        average_precisions.append(sum(hits[:k + 1].mean() for k in range(relevant) if hits[k]) / relevant)
    return np.mean(first), np.mean(top10), np.mean(average_precisions)


def test_every_image_is_a_query_once_and_the_plain_figures_equal_a_loop_reference(tmp_path):
    features, labels = write_synthetic_dump(tmp_path)
    assert np.bincount(bench.fold_of_each(labels, 4)).tolist() == [12] * 4  # 2 images of each class per fold
    bench.main(["--features", str(tmp_path), "--folds", "4", "--shortlists", "21", "--full_pool",
                "--out", str(tmp_path / "r.jsonl")])
    records = {r["setting"]: r for r in map(json.loads, (tmp_path / "r.jsonl").read_text().splitlines())}
    assert list(records) == ["plain", "re_ranking 21", "full pool"]
    plain = records["plain"]
    np.testing.assert_allclose([plain["recall@1"], plain["precision@10"], plain["map@r"]],
                               plain_reference(features, labels, 4), atol=1e-4)
    assert records["re_ranking 21"]["map@r"] != plain["map@r"]  # the re-ranked searches were scored
