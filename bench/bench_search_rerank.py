"""What search.py --re_ranking gains on real embeddings: a gallery search with and without the shortlist re-ranking.

    python infer.py --pretrained_model CKPT --data_dir data/omniglot --infer_list data/omniglot/val.txt \
        --num_workers 0 --output_dir DUMP
    python bench/bench_search_rerank.py --features DUMP --shortlists 50 100 200

Protocol (every image a query once, never in its own gallery): the images of each class are dealt
into --folds folds by their position in the class (image j of a class goes to fold j mod F); for
each fold, a Flat gallery (retrieval.gallery.Gallery, as index.py builds it) holds the other folds
and the fold's images are its queries. With 20 images per class and 4 folds a query has R = 15
relevant gallery items. Per query, the matches of Gallery.search (top max(10, R)), plain and with
ReRanking(shortlist) for each --shortlists value, score:
  recall@1        its first match has its label
  precision@10    share of its top 10 with its label
  map@r           MAP@R (evaluation.metrics.map_at_r)
The row "full pool" is eval.py's --re_ranking with --query_list/--gallery_list on the same folds
(evaluation.postprocess.ranked_blocks: all the fold's queries and the whole gallery in one pool),
the figure the shortlist approximates. search_s is the time of the fold searches (queries
embedded already). One JSON line per setting goes to --out with the load average before and after.
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

from engine import dump
from evaluation import metrics
from evaluation.postprocess import PostProcessing, ranked_blocks
from retrieval.gallery import Gallery, ReRanking

TOP = 10


def load_average():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def read_dump(folder):
    """(unit-length features, labels, fingerprint) of infer.py's dump in `folder`."""
    fingerprint = dump.dump_fingerprint(folder)
    features, _, labels, _, _ = dump.read_dump(folder, folder, fingerprint, None)
    features = features.astype(np.float32)
    return features / np.linalg.norm(features, axis=1, keepdims=True), np.asarray(labels), fingerprint


def fold_of_each(labels, folds):
    """Image j of its class (in list order) -> fold j mod folds."""
    position = np.zeros(len(labels), np.int64)
    seen = {}
    for i, label in enumerate(labels.tolist()):
        position[i] = seen.get(label, 0)
        seen[label] = position[i] + 1
    return position % folds


def scores(neighbor_labels, query_labels, relevant):
    hits = neighbor_labels == query_labels[:, None]
    return {"recall@1": float(hits[:, 0].mean()), "precision@10": float(hits[:, :TOP].mean()),
            "map@r": metrics.map_at_r(hits, relevant)}


def run(features, labels, fingerprint, folds, settings):
    """{setting name: (neighbour labels of every query [N, depth], seconds)} over the folds."""
    fold = fold_of_each(labels, folds)
    relevant = np.zeros(len(labels), np.int64)
    for f in range(folds):
        relevant[fold == f] = metrics.relevant_counts(labels[fold == f], labels[fold != f], leave_one_out=False)
    depth = max(TOP, int(relevant.max()))
    found = {name: np.zeros((len(labels), depth), labels.dtype) for name in settings}
    seconds = dict.fromkeys(settings, 0.0)
    with tempfile.TemporaryDirectory() as work:
        os.makedirs(os.path.join(work, "data"))
        for f in range(folds):
            queries, items = np.flatnonzero(fold == f), np.flatnonzero(fold != f)
            gallery = Gallery.create(os.path.join(work, f"fold{f}"), dim=features.shape[1], fingerprint=fingerprint,
                                     model_info={}, data_dir=os.path.join(work, "data"), index_type="Flat")
            gallery.add(features[items], [os.path.join(work, "data", f"{i}.png") for i in items], labels[items])
            for name, re_ranking in settings.items():
                start = time.perf_counter()
                if re_ranking == "full pool":
                    for first, order, _ in ranked_blocks(features[queries], features[items],
                                                         wanted=np.full(len(queries), depth), leave_one_out=False,
                                                         feat_norm=True, post_processing=PostProcessing(re_ranking=True)):
                        found[name][queries[first:first + len(order)]] = labels[items][order]
                else:
                    results = gallery.search(features[queries], depth, re_ranking=re_ranking)
                    found[name][queries] = [[m.label for m in matches] for matches in results]
                seconds[name] += time.perf_counter() - start
            gallery.close()
    return {name: (scores(found[name], labels, relevant), seconds[name]) for name in settings}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", required=True, help="infer.py's dump of the evaluation list")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--shortlists", type=int, nargs="*", default=[100], help="ReRanking shortlist sizes")
    parser.add_argument("--full_pool", action="store_true", help="also eval.py's full-pool re-ranking per fold")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                      "search-rerank.jsonl"))
    args = parser.parse_args(argv)
    command = "python bench/bench_search_rerank.py " + " ".join(sys.argv[1:] if argv is None else argv)
    features, labels, fingerprint = read_dump(args.features)
    settings = {"plain": None, **{f"re_ranking {n}": ReRanking(n) for n in args.shortlists}}
    if args.full_pool:
        settings["full pool"] = "full pool"
    load_before = load_average()
    measured = run(features, labels, fingerprint, args.folds, settings)
    for name, (figures, seconds) in measured.items():
        record = {"bench": "search-rerank", "setting": name, "features": os.path.abspath(args.features),
                  "images": len(labels), "classes": len(np.unique(labels)), "folds": args.folds,
                  **{key: round(value, 4) for key, value in figures.items()}, "search_s": round(seconds, 1),
                  "load_before": load_before, "load_after": load_average(), "cpus": os.cpu_count(),
                  "python": platform.python_version(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "command": command}
        print(json.dumps(record), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
