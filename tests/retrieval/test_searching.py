"""retrieval.searching: the queries of flags and list files, batched searches, the JSON lines."""
import json

import pytest

import index
from retrieval import searching
from retrieval.gallery import Gallery, ReRanking
from utility.errors import UserError


def test_queries_from_images_then_a_list(tmp_path):
    (tmp_path / "q.txt").write_text("a.png 3\nb.png 4\n")
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"")  # the list's files are checked to exist, not read
    paths, labels = searching.query_images(["x.png"], str(tmp_path / "q.txt"), str(tmp_path))
    assert paths == ["x.png", str(tmp_path / "a.png"), str(tmp_path / "b.png")] and labels == [None, 3, 4]
    with pytest.raises(UserError, match="give a query image"):
        searching.query_images()


def found(results):
    return [[(m.id, m.rank) for m in row] for row in results]


def test_search_files_in_batches_equals_one_search(tiny_export, tmp_path, monkeypatch):
    index_dir = str(tmp_path / "gallery")
    index.main(["build", "--model_dir", tiny_export["model_dir"], "--features", tiny_export["dump_dir"],
                "--index_dir", index_dir])
    gallery = Gallery.open(index_dir)
    paths = [gallery.image_path(i) for i in range(7)]
    whole, query_sigma2 = searching.search_files(gallery, paths, top_k=3)
    monkeypatch.setattr(searching, "QUERY_BATCH", 2)
    batched, _ = searching.search_files(gallery, paths, top_k=3)
    assert query_sigma2 == [None] * 7 and {m.sigma2 for row in whole for m in row} == {None}  # no uncertainty
    assert [[m.id for m in row] for row in batched] == [[m.id for m in row] for row in whole]
    assert [row[0].id for row in whole] == list(range(7))
    reranked, _ = searching.search_files(gallery, paths, top_k=10, re_ranking=ReRanking(21))
    features = gallery.embedder.embed_files(paths)
    assert found(reranked) == found(gallery.search(features, 10, re_ranking=ReRanking(21)))
    assert found(reranked) != found(gallery.search(features, 10))  # the re-ranking reached the gallery

    searching.write_results(str(tmp_path / "r.jsonl"), paths, [None] * 7, whole, query_sigma2)
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["matches"][0]["id"] for r in records] == list(range(7)) and len(records[0]["matches"]) == 3
