"""Time and memory of re-identification evaluation: mAP/CMC, k-reciprocal re-ranking, verification threshold.

    python bench/bench_reid.py                                   # Market-1501 sizes: 3368 queries, 15913 gallery, 2048-d
    python bench/bench_reid.py --queries 8000 --gallery 40000    # how far it scales

Synthetic clustered float32 embeddings (fixed seed; about 25 images per identity, 6 cameras).
Memory is numpy's traced peak (tracemalloc) beyond the embeddings, per phase. The figures
(mAP near 1) say nothing about real data: only the time and memory are the point.
"""
import argparse
import time
import tracemalloc

import numpy as np

from evaluation.reid import reid_metrics
from evaluation.reranking import KReciprocalReranker
from evaluation.threshold import verification_threshold


def embeddings(count, ids, centres, noise, rng):
    features = centres[ids]
    features += noise * rng.standard_normal((count, centres.shape[1]), dtype=np.float32)
    return features


def phase(name, run):
    tracemalloc.reset_peak()
    start = time.time()
    result = run()
    print(f"{name}: {time.time() - start:.1f} s, peak {tracemalloc.get_traced_memory()[1] / 2**20:.0f} MiB "
          f"beyond the embeddings", flush=True)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=3368)
    parser.add_argument("--gallery", type=int, default=15913)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--noise", type=float, default=3.0, help="per-dimension noise around unit-variance centres")
    parser.add_argument("--threshold_images", type=int, default=10000, help="0 skips the threshold")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    num_ids = max(750, (args.queries + args.gallery) // 25)
    centres = rng.standard_normal((num_ids + 1, args.dim), dtype=np.float32)
    query_ids, gallery_ids = rng.integers(1, num_ids + 1, args.queries), rng.integers(0, num_ids + 1, args.gallery)
    query = embeddings(args.queries, query_ids, centres, args.noise, rng)
    gallery = embeddings(args.gallery, gallery_ids, centres, args.noise, rng)
    query_cams, gallery_cams = rng.integers(1, 7, args.queries), rng.integers(1, 7, args.gallery)
    print(f"{args.queries} queries, {args.gallery} gallery images, {args.dim}-d: embeddings "
          f"{(query.nbytes + gallery.nbytes) / 2**20:.0f} MiB", flush=True)

    tracemalloc.start()
    plain = phase("mAP/CMC", lambda: reid_metrics(query, query_ids, query_cams, gallery, gallery_ids, gallery_cams))
    reranker = phase("re-ranking: neighbours, k-reciprocal sets, vectors",
                     lambda: KReciprocalReranker(query, gallery))
    reranked = phase("re-ranked mAP/CMC", lambda: reid_metrics(query, query_ids, query_cams, gallery, gallery_ids,
                                                               gallery_cams, distance_fn=reranker))
    print(f"mAP {plain['map']:.4f} -> {reranked['map']:.4f} re-ranked, CMC@1 {plain['cmc@1']:.4f} -> "
          f"{reranked['cmc@1']:.4f}", flush=True)
    if args.threshold_images:
        count = min(args.threshold_images, args.gallery)
        result = phase(f"threshold over {count * (count - 1) // 2} pairs",
                       lambda: verification_threshold(gallery[:count], gallery_ids[:count]))
        print(f"threshold {result['threshold']:.4f}, accuracy {result['accuracy']:.4f}, "
              f"TPR {result['tpr_at_fpr']:.4f} at FPR 1e-3", flush=True)


if __name__ == "__main__":
    main()
