"""Search a gallery for query image files: search.py's work, callable from Python.

    from retrieval.gallery import Gallery
    from retrieval.searching import search_files

    gallery = Gallery.open("gallery")
    results, query_sigma2 = search_files(gallery, ["photo.jpg"], top_k=5)
    for match in results[0]:
        print(match.rank, match.similarity, match.path, match.label, match.sigma2)

query_sigma2 (and each match's sigma2) is the predicted sigma^2 of a model trained with --uncertainty
True, None for other models. query_expansion (an evaluation.postprocess.Expansion) applies alpha-QE
with the gallery's own vectors; re_ranking (a retrieval.gallery.ReRanking) re-ranks each query's
shortlist by k-reciprocal distance (Gallery.search).
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


def search_files(gallery, paths, top_k=10, threshold=None, query_expansion=None, re_ranking=None):
    """(per image file its matches in the gallery (retrieval.gallery.Match) best first, per image file its
    sigma^2 or None when the model predicts no uncertainty)."""
    results, query_sigma2 = [], []
    for start in range(0, len(paths), QUERY_BATCH):
        images = read_images(paths[start:start + QUERY_BATCH])  # a bad file stops before the model loads
        features, sigma2 = gallery.embedder.embed(images)
        results.extend(gallery.search(features, top_k, threshold, query_expansion, re_ranking))
        query_sigma2.extend([None] * len(images) if sigma2 is None else sigma2.tolist())
    return results, query_sigma2


def write_results(out_path, query_paths, query_labels, results, query_sigma2):
    """One JSON line per query: the query, its label, its sigma^2 (null without uncertainty) and its matches."""
    lines = []
    for path, label, sigma2, matches in zip(query_paths, query_labels, query_sigma2, results):
        record = {"query": path, "label": label, "sigma2": sigma2,
                  "matches": [{"rank": m.rank, "id": m.id, "similarity": round(float(m.similarity), 6),
                               "path": m.path, "label": m.label, "metadata": m.metadata, "sigma2": m.sigma2}
                              for m in matches]}
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    write_text(out_path, "".join(lines))


def draw_results(out_png, gallery, query_paths, query_labels, results):
    """A PNG of each query beside its matches (evaluation.visualize.draw_retrieval)."""
    from evaluation.visualize import draw_retrieval

    item_paths = gallery.item_paths()
    draw_retrieval(query_paths, query_labels,
                   [[item_paths[m.id] for m in matches] for matches in results],
                   [[m.label for m in matches] for matches in results], out_png)
