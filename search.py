"""Search a gallery index (index.py build) for the images most like a query image.

    python search.py --index_dir gallery --query photo.jpg --top_k 10
    python search.py --index_dir gallery --query_list queries.txt --data_dir data --threshold 0.6 \
        --output results.jsonl --picture results.png

Prints, for each query, its best matches (rank, similarity, path, label), best first. The
similarity is the cosine of the two embeddings; with --threshold (e.g. from eval.py's threshold
mode) matches below it are dropped, and a query with none left answers "no match" (an unknown
item). --output writes one JSON line per query; --picture draws each query beside its matches.
A model trained with --uncertainty True also gives the query's and every match's sigma^2 (its
predicted uncertainty). --query_expansion K,ALPHA searches with the query expanded by its K best
matches' gallery vectors weighted by similarity**ALPHA (alpha-QE, as eval.py's flag);
--re_ranking [SHORTLIST] orders each query's 100 (SHORTLIST) most similar gallery images by
k-reciprocal re-ranked distance (eval.py's --re_ranking over the query and its shortlist).
The work is retrieval/searching.py's.
"""
from cli.retrieval_args import parse_search_args
from cli.runtime import run_cli
from retrieval.gallery import Gallery
from retrieval.searching import draw_results, query_images, search_files, write_results


def main(argv=None):
    args = parse_search_args(__doc__, argv)
    paths, labels = query_images(args.query, args.query_list, args.data_dir)
    gallery = Gallery.open(args.index_dir, engine=args.engine)
    try:
        results, query_sigma2 = search_files(gallery, paths, args.top_k, args.threshold, args.query_expansion,
                                              args.re_ranking)
        for path, label, sigma2, matches in zip(paths, labels, query_sigma2, results):
            _print_matches(path, label, sigma2, matches, args.threshold)
        if args.output:
            write_results(args.output, paths, labels, results, query_sigma2)
            print(f"Wrote the results to {args.output}", flush=True)
        if args.picture:
            draw_results(args.picture, gallery, paths, labels, results)
            print(f"Wrote the picture to {args.picture}", flush=True)
    finally:
        gallery.close()


def _print_matches(path, label, sigma2, matches, threshold):
    print(f"Query {path}" + ("" if label is None else f" (label {label})")
          + ("" if sigma2 is None else f" (sigma^2 {sigma2:.4f})") + ":")
    if not matches:
        print(f"  no match (no gallery image reaches similarity {threshold})" if threshold is not None
              else "  no match (the gallery is empty)")
    for match in matches:
        print(f"  {match.rank:3d}  {match.similarity:.4f}  {match.path}  label {match.label}"
              + ("" if match.sigma2 is None else f"  sigma^2 {match.sigma2:.4f}"))


def run():
    """The console entry point (pyproject.toml)."""
    run_cli(main)


if __name__ == "__main__":
    run()
