"""Gallery search speed and accuracy: the index types of retrieval.backends.faiss_index at 10k, 100k and 1M items.

    python bench/bench_search.py                                   # 10k and 100k, the default index types
    python bench/bench_search.py --sizes 1000000 --index_types Flat default --sweep nprobe=32 nprobe=64 nprobe=128

For each gallery size, clustered synthetic 512-d embeddings (class centres plus Gaussian noise,
L2-normalised; queries are new samples of the same classes) are indexed through the project's own
backend (FaissIndex.create + with_added, training included), then measured:
  build_s           create + train + add
  index_mb          resident memory the built index added to the process (RSS after - before, MB)
  stored_mb         the index's size in faiss's file format (MB)
  single_p50/p99    ms per search of one query for the top 10 (after a warm-up)
  batch64_p50/p99   ms per search of 64 queries for the top 10 each
  recall@10         |approximate top 10 & exact top 10| / 10, mean over the queries (exact: faiss.knn)
"default" is the type the gallery chooses for that size (default_index_type); --sweep re-measures
an index under other search parameters without rebuilding it. One JSON line per measurement goes to
--out (appended) with the machine's load average before and after; --table prints them as the
Markdown table of docs/retrieval.md.
"""
import argparse
import json
import os
import platform
import sys
import time

import faiss
import numpy as np

from retrieval.backends.faiss_index import FaissIndex, default_index_type, default_search_params

DIM = 512
TOP_K = 10
QUERIES = 1024        # recall over all; batches of 64 over all
SINGLE_QUERIES = 300  # single-query latency over the first ones
WARM_UP = 10
PER_CLASS = 5         # gallery images per class: half a query's top 10 come from related classes
GROUP_CLASSES = 100   # classes per group of related classes (a supercategory)
SPREAD = 1.0          # std of class centres around their group's centre, and of images around their class's


def clustered(n, queries, dim=DIM, seed=0):
    """(gallery [n, dim], queries [queries, dim]) float32, L2-normalised; queries are new images of gallery classes.

    Two levels, as learnt embeddings have: groups of related classes (unit-std centres), class
    centres around their group's, images around their class's. A query's 10 nearest neighbours are
    then its class's images and images of related classes, not random strangers.
    """
    rng = np.random.default_rng(seed)
    classes = max(1, n // PER_CLASS)
    groups = max(1, classes // GROUP_CLASSES)
    centres = rng.standard_normal((groups, dim), dtype=np.float32)[np.arange(classes) % groups]
    centres += SPREAD * rng.standard_normal((classes, dim), dtype=np.float32)
    gallery = np.empty((n, dim), np.float32)
    for start in range(0, n, 65536):
        rows = np.arange(start, min(n, start + 65536)) % classes
        gallery[start:start + len(rows)] = centres[rows] + SPREAD * rng.standard_normal((len(rows), dim), np.float32)
    query = centres[rng.integers(0, classes, queries)] + SPREAD * rng.standard_normal((queries, dim), np.float32)
    for block in (gallery, query):
        block /= np.linalg.norm(block, axis=1, keepdims=True)
    return gallery, query


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def load_average():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def percentiles(times_s):
    ms = np.asarray(times_s) * 1000
    return round(float(np.percentile(ms, 50)), 3), round(float(np.percentile(ms, 99)), 3)


def measure_search(index, queries, truth):
    """Latencies (ms p50/p99, single and batch of 64) and recall@10 of a built FaissIndex."""
    for i in range(WARM_UP):
        index.search(queries[i:i + 1], TOP_K)
    single = []
    for i in range(SINGLE_QUERIES):
        start = time.perf_counter()
        index.search(queries[i:i + 1], TOP_K)
        single.append(time.perf_counter() - start)
    batches, found = [], []
    for start in range(0, len(queries), 64):
        began = time.perf_counter()
        _, ids = index.search(queries[start:start + 64], TOP_K)
        batches.append(time.perf_counter() - began)
        found.append(ids)
    found = np.concatenate(found)
    recall = np.mean([len(set(f) & set(t)) / TOP_K for f, t in zip(found.tolist(), truth.tolist())])
    (s50, s99), (b50, b99) = percentiles(single), percentiles(batches)
    return {"single_p50_ms": s50, "single_p99_ms": s99, "batch64_p50_ms": b50, "batch64_p99_ms": b99,
            "recall@10": round(float(recall), 4)}


def bench_size(n, index_types, sweep, out_path, command):
    started = time.time()
    gallery, queries = clustered(n, QUERIES)
    truth = faiss.knn(queries, gallery, TOP_K, faiss.METRIC_INNER_PRODUCT)[1]
    print(f"{n} x {DIM}: data and exact neighbours in {time.time() - started:.0f} s", flush=True)
    for requested in index_types:
        index_type, params = (default_index_type(n) if requested == "default"
                              else (requested, default_search_params(requested)))
        load_before = load_average()
        before = rss_mb()
        start = time.perf_counter()
        index = FaissIndex.create(DIM, index_type, params).with_added(gallery, np.arange(n, dtype=np.int64))
        build_s = time.perf_counter() - start
        index_mb = rss_mb() - before
        stored_mb = faiss.serialize_index(index.index).nbytes / 2**20
        for search_params in [params] + [p for p in sweep if index_type != "Flat" and p != params]:
            if search_params:
                faiss.ParameterSpace().set_index_parameters(index.index, search_params)
            record = {"bench": "search", "n": n, "dim": DIM, "data": f"clustered synthetic: {PER_CLASS} per class, "
                      f"{GROUP_CLASSES} classes per group, spread {SPREAD}", "index_type": index_type, "search_params": search_params,
                      "default_choice": requested == "default" and search_params == params,
                      "build_s": round(build_s, 1), "index_mb": round(index_mb),
                      "stored_mb": round(stored_mb), **measure_search(index, queries, truth),
                      "load_before": load_before, "load_after": load_average(), "cpus": os.cpu_count(),
                      "faiss": faiss.__version__, "python": platform.python_version(),
                      "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": command}
            print(json.dumps(record), flush=True)
            with open(out_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        del index


TABLE_COLUMNS = (("n", "items"), ("index_type", "index"), ("search_params", "search"), ("build_s", "build s"),
                 ("stored_mb", "index MB"), ("index_mb", "RSS +MB"), ("single_p50_ms", "1 query p50 ms"),
                 ("single_p99_ms", "p99 ms"), ("batch64_p50_ms", "64 queries p50 ms"), ("batch64_p99_ms", "p99 ms"),
                 ("recall@10", "recall@10"), ("load_before", "load before"))


def table(results_path):
    """The recorded measurements as a Markdown table (docs/retrieval.md's benchmark section)."""
    with open(results_path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    lines = ["| " + " | ".join(title for _, title in TABLE_COLUMNS) + " |",
             "|" + " --- |" * len(TABLE_COLUMNS)]
    for record in records:
        cells = [f"{record[key]:,}" if key == "n" else str(record[key] if record[key] != "" else "-")
                 for key, _ in TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--index_types", nargs="+", default=["default"],
                        help="faiss index_factory strings, or 'default' (the gallery's choice for the size)")
    parser.add_argument("--sweep", nargs="*", default=[], help="more faiss search parameters to measure, "
                                                               "e.g. nprobe=32 nprobe=64")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                      "search.jsonl"))
    parser.add_argument("--table", action="store_true", help="print the recorded results (--out) as a Markdown table")
    args = parser.parse_args(argv)
    if args.table:
        print(table(args.out))
        return
    command = "python bench/bench_search.py " + " ".join(sys.argv[1:] if argv is None else argv)
    for n in args.sizes:
        bench_size(n, args.index_types, args.sweep, args.out, command)


if __name__ == "__main__":
    main()
