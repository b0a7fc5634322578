"""Time leave-one-out retrieval evaluation: evaluation.metrics vs faiss vs the original all-pairs code.

    python bench/bench_knn.py                                  # N=10,000 x 2048-d, the three methods
    python bench/bench_knn.py --n 60000 --per_class 5 --methods ours --nmi   # SOP test size

Each method runs in its own subprocess on the same clustered float32
embeddings (a fixed seed), so its peak memory beyond the embeddings is
measured cleanly: peak RSS (ru_maxrss) after the run minus the RSS once the
embeddings exist. Methods:
  ours      evaluation.evaluator.Evaluator: faiss.knn per block of queries (Recall@K, MAP@R, R-precision)
  faiss     faiss.IndexFlatIP exact search for K+1 neighbours, self dropped (Recall@K only)
  numpy     the alternative that lost: blocks of 256 queries, matmul + np.partition top-k
  original  the original example's recall_topk: full N x N distance matrix + argsort
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

KS = (1, 2, 4, 8)
METHODS = ("ours", "faiss", "numpy", "original")


def recall_topk_original(features, labels, k=1):
    """The original example's all-pairs Recall@K (N x N float64 distances, full argsort).

    Kept as the reference the new code is measured and tested against.
    """
    features = np.asarray(features).reshape(len(features), -1)
    features = features / np.sqrt(np.sum(features ** 2, axis=1, keepdims=True))
    squared_norms = np.sum(features ** 2, axis=1, keepdims=True)
    distances = squared_norms + squared_norms.T - 2 * features @ features.T
    distances = distances + np.eye(len(features)) * 1e8  # a query is never its own neighbour
    ranking = np.argsort(distances, axis=1)
    hits = 0
    for i in range(len(features)):
        if any(labels[ranking[i, j]] == labels[i] for j in range(k)):
            hits += 1
    return hits / len(features)


def clustered_embeddings(n, dim, per_class, noise, seed=0):
    """Class centres plus Gaussian noise (std `noise` per coordinate, centres have std 1), float32.

    Written in chunks to keep the peak near N x D x 4 bytes.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(n) // per_class
    centres = rng.standard_normal((labels[-1] + 1, dim), dtype=np.float32)
    features = np.empty((n, dim), np.float32)
    for start in range(0, n, 4096):
        rows = labels[start:start + 4096]
        features[start:start + len(rows)] = centres[rows] + noise * rng.standard_normal((len(rows), dim), dtype=np.float32)
    return features, labels


def run_ours(features, labels):
    from evaluation.evaluator import Evaluator
    return Evaluator(["recall_at_k", "map_at_r", "r_precision"], ks=KS)(features, labels)


def run_nmi(features, labels):
    """NMI timed on its own: k-means with as many clusters as classes."""
    from evaluation.metrics import nmi
    started = time.perf_counter()
    score = nmi(features / np.linalg.norm(features, axis=1, keepdims=True), labels)
    return {"nmi": score, "nmi_seconds": time.perf_counter() - started}


def run_faiss(features, labels):
    import faiss
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(unit.shape[1])
    index.add(unit)
    _, neighbors = index.search(unit, max(KS) + 1)
    is_self = neighbors == np.arange(len(unit))[:, None]
    is_self[~is_self.any(axis=1), -1] = True  # self not returned (duplicates): drop the last
    others = neighbors[~is_self].reshape(len(unit), max(KS))
    hits = labels[others] == labels[:, None]
    return {f"recall@{k}": float(hits[:, :k].any(axis=1).mean()) for k in KS}


def run_numpy(features, labels, block_rows=256):
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    hits = np.empty((len(unit), max(KS)), bool)
    for start in range(0, len(unit), block_rows):
        scores = unit[start:start + block_rows] @ unit.T
        scores[np.arange(len(scores)), np.arange(start, start + len(scores))] = -np.inf
        neighbors = top_k_columns(scores, max(KS))
        hits[start:start + len(scores)] = labels[neighbors] == labels[start:start + len(scores), None]
    return {f"recall@{k}": float(hits[:, :k].any(axis=1).mean()) for k in KS}


def top_k_columns(scores, k):
    """Columns of the k largest scores per row, largest first, ties by column."""
    num_rows, num_cols = scores.shape
    kth_best = np.partition(scores, num_cols - k, axis=1)[:, num_cols - k]
    rows, cols = np.nonzero(scores >= kth_best[:, None])
    order = np.lexsort((cols, -scores[rows, cols], rows))
    per_row = np.bincount(rows, minlength=num_rows)
    return cols[order[(np.cumsum(per_row) - per_row)[:, None] + np.arange(k)]]


def run_original(features, labels):
    return {f"recall@{k}": recall_topk_original(features, labels, k) for k in KS}


def current_rss_mib():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(args):
    """Run one method and print one JSON line: seconds, peak MiB beyond the embeddings, metrics.

    seconds cover the retrieval metrics; NMI (--nmi) is timed separately as nmi_seconds.
    """
    import faiss  # noqa: F401  loaded before the baseline: library pages are not the method's memory
    import sklearn.metrics  # noqa: F401
    features, labels = clustered_embeddings(args.n, args.dim, args.per_class, args.noise)
    baseline = current_rss_mib()
    run = {"ours": run_ours, "faiss": run_faiss, "numpy": run_numpy, "original": run_original}[args.child]
    started = time.perf_counter()
    metrics = run(features, labels)
    seconds = time.perf_counter() - started
    if args.nmi and args.child == "ours":
        metrics.update(run_nmi(features, labels))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_extra_mib": peak - baseline,
                      "embeddings_mib": features.nbytes / 2**20, "metrics": metrics}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10000, help="number of embeddings")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--per_class", type=int, default=10, help="images per class")
    parser.add_argument("--noise", type=float, default=4.0,
                        help="noise std around class centres (4: Recall@1 about 0.6 at N=10,000)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--repeat", type=int, default=1, help="runs per method; the fastest is reported")
    parser.add_argument("--nmi", action="store_true", help="also time NMI (k-means with N/per_class clusters) for ours")
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    print(f"N={args.n} D={args.dim} {args.per_class} per class, noise {args.noise}, leave-one-out, cpu cores={os.cpu_count()}")
    print(f"{'method':<10}{'seconds':>9}{'peak MiB':>10}  " + "  ".join(f"R@{k}" for k in KS) + "  other")
    for method in args.methods.split(","):
        runs = [run_child(method, args) for _ in range(args.repeat)]
        fastest = min(runs, key=lambda run: run["seconds"])
        metrics = fastest["metrics"]
        recalls = "  ".join(f"{metrics[f'recall@{k}']:.3f}" for k in KS)
        other = {key: round(value, 4) for key, value in metrics.items() if not key.startswith("recall@")}
        peak = max(run["peak_extra_mib"] for run in runs)
        print(f"{method:<10}{fastest['seconds']:>9.2f}{peak:>10.0f}  {recalls}  {other or ''}", flush=True)


def run_child(method, args):
    """One method in a fresh interpreter; returns its JSON report."""
    command = [sys.executable, "-m", "bench.bench_knn", "--child", method, "--n", str(args.n),
               "--dim", str(args.dim), "--per_class", str(args.per_class), "--noise", str(args.noise)]
    if args.nmi:
        command.append("--nmi")
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    output = subprocess.run(command, check=True, capture_output=True, text=True, cwd=repo_root).stdout
    return json.loads(output.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
