"""Search a gallery for query image files: search.py's work, callable from Python.

    from retrieval.gallery import Gallery
    from retrieval.searching import search_files

    gallery = Gallery.open("gallery")
    for match in search_files(gallery, ["photo.jpg"], top_k=5)[0]:
        print(match.rank, match.similarity, match.path, match.label)
"""
import json

from retrieval.query import read_images
from utility.errors import UserError
from utility.files import write_text

QUERY_BATCH = 64  # query images read and embedded at a time


def query_images(paths=(), query_list=None, data_dir=""):
    """(paths, labels) of the queries: the images of `paths` (label None), then the list file's (`path [LABEL]`)."""
    paths, labels = list(paths), [None] * len(paths)
    if query_list:
        import reader

        image_list = reader.read_image_list(query_list, data_dir, require_labels=False)
        paths += image_list.paths
        labels += image_list.labels.tolist() if image_list.labels is not None else [None] * len(image_list.paths)
    if not paths:
        raise UserError("give a query image with --query IMAGE or a list with --query_list FILE")
    return paths, labels


def search_files(gallery, paths, top_k=10, threshold=None):
    """Per image file: its matches in the gallery (retrieval.gallery.Match), best first."""
    results = []
    for start in range(0, len(paths), QUERY_BATCH):
        images = read_images(paths[start:start + QUERY_BATCH])  # a bad file stops before the model loads
        results.extend(gallery.search(gallery.embedder.embed_images(images), top_k, threshold))
    return results


def write_results(out_path, query_paths, query_labels, results):
    """One JSON line per query: the query, its label and its matches."""
    lines = []
    for path, label, matches in zip(query_paths, query_labels, results):
        record = {"query": path, "label": label,
                  "matches": [{"rank": m.rank, "id": m.id, "similarity": round(float(m.similarity), 6),
                               "path": m.path, "label": m.label, "metadata": m.metadata} for m in matches]}
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    write_text(out_path, "".join(lines))


def draw_results(out_png, gallery, query_paths, query_labels, results):
    """A PNG of each query beside its matches (evaluation.visualize.draw_retrieval)."""
    from evaluation.visualize import draw_retrieval

    item_paths = gallery.item_paths()
    draw_retrieval(query_paths, query_labels,
                   [[item_paths[m.id] for m in matches] for matches in results],
                   [[m.label for m in matches] for matches in results], out_png)
