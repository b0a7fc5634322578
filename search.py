"""Search a gallery index (index.py build) for the images most like a query image.

    python search.py --index_dir gallery --query photo.jpg --top_k 10
    python search.py --index_dir gallery --query_list queries.txt --data_dir data --threshold 0.6 \
        --output results.jsonl --picture results.png

Prints, for each query, its best matches (rank, similarity, path, label), best first. The
similarity is the cosine of the two embeddings; with --threshold (e.g. from eval.py's threshold
mode) matches below it are dropped, and a query with none left answers "no match" (an unknown
item). --output writes one JSON line per query; --picture draws each query beside its matches.
"""
import argparse
import json

from utility.errors import UserError
from utility.files import write_text

QUERY_BATCH = 64  # query images read and embedded at a time


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.top_k < 1:
        raise UserError(f"--top_k must be at least 1, not {args.top_k}")
    query_paths, query_labels = _queries(args)
    from retrieval.gallery import Gallery
    from retrieval.query import read_images

    gallery = Gallery.open(args.index_dir)
    results = []
    for start in range(0, len(query_paths), QUERY_BATCH):
        images = read_images(query_paths[start:start + QUERY_BATCH])  # a bad file stops before the model loads
        results.extend(gallery.search(gallery.embedder.embed_images(images), args.top_k, args.threshold))
    for path, label, matches in zip(query_paths, query_labels, results):
        _print_matches(path, label, matches, args.threshold)
    if args.output:
        _write_results(args.output, query_paths, query_labels, results)
    if args.picture:
        _draw(args.picture, gallery, query_paths, query_labels, results)
    gallery.close()


def _parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index_dir", required=True, help="an index folder written by index.py build")
    parser.add_argument("--query", action="append", default=[], help="a query image (may be repeated)")
    parser.add_argument("--query_list", help="a list file of query images (`path [LABEL]` lines)")
    parser.add_argument("--data_dir", default="", help="folder the query list's paths are relative to")
    parser.add_argument("--top_k", type=int, default=10, help="matches per query")
    parser.add_argument("--threshold", type=float, help="drop matches with a lower similarity (no match if none)")
    parser.add_argument("--output", help="write the results as JSON lines to this file")
    parser.add_argument("--picture", help="draw the queries and their matches into this PNG")
    return parser


def _queries(args):
    """(paths, labels) of the queries: --query images (label None), then the --query_list's."""
    paths, labels = list(args.query), [None] * len(args.query)
    if args.query_list:
        import reader

        image_list = reader.read_image_list(args.query_list, args.data_dir, require_labels=False)
        paths += image_list.paths
        labels += image_list.labels.tolist() if image_list.labels is not None else [None] * len(image_list.paths)
    if not paths:
        raise UserError("give a query image with --query IMAGE or a list with --query_list FILE")
    return paths, labels


def _print_matches(path, label, matches, threshold):
    print(f"Query {path}" + ("" if label is None else f" (label {label})") + ":")
    if not matches:
        print(f"  no match (no gallery image reaches similarity {threshold})" if threshold is not None
              else "  no match (the gallery is empty)")
    for match in matches:
        print(f"  {match.rank:3d}  {match.similarity:.4f}  {match.path}  label {match.label}")


def _write_results(out_path, query_paths, query_labels, results):
    lines = []
    for path, label, matches in zip(query_paths, query_labels, results):
        record = {"query": path, "label": label,
                  "matches": [{"rank": m.rank, "id": m.id, "similarity": round(float(m.similarity), 6),
                               "path": m.path, "label": m.label, "metadata": m.metadata} for m in matches]}
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    write_text(out_path, "".join(lines))
    print(f"Wrote the results to {out_path}", flush=True)


def _draw(out_png, gallery, query_paths, query_labels, results):
    from evaluation.visualize import draw_retrieval

    item_paths = gallery.item_paths()
    draw_retrieval(query_paths, query_labels,
                   [[item_paths[m.id] for m in matches] for matches in results],
                   [[m.label for m in matches] for matches in results], out_png)
    print(f"Wrote the picture to {out_png}", flush=True)


def run():
    """The console entry point (pyproject.toml)."""
    from cli.runtime import run_cli

    run_cli(main)


if __name__ == "__main__":
    run()
