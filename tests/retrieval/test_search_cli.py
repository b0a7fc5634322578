"""search.py: ranked results, threshold and "no match", JSON lines, the picture, bad queries."""
import json
import os

import numpy as np
import pytest
from PIL import Image

import index
import search
from evaluation import visualize
from utility.errors import UserError


@pytest.fixture(scope="module")
def built(tiny_export, tmp_path_factory):
    out = tmp_path_factory.mktemp("search-cli")
    index.main(["build", "--model_dir", tiny_export["model_dir"], "--gallery_list", tiny_export["val_list"],
                "--data_dir", tiny_export["data_dir"], "--index_dir", str(out / "gallery"), "--num_workers", "0"])
    stranger = out / "stranger.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(stranger)
    return {"index_dir": str(out / "gallery"), "stranger": str(stranger), **tiny_export}


def test_threshold_answers_no_match_for_an_unknown_image(built, tmp_path, capsys):
    known = os.path.join(built["data_dir"], "c101", "0.png")
    search.main(["--index_dir", built["index_dir"], "--query", built["stranger"], "--query", known, "--top_k", "3",
                 "--threshold", "0.99999", "--output", str(tmp_path / "r.jsonl")])
    out = capsys.readouterr().out
    assert f"Query {built['stranger']}:\n  no match (no gallery image reaches similarity 0.99999)\n" in out
    stranger, itself = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert stranger["matches"] == [] and stranger["label"] is None
    assert [(m["path"], m["label"]) for m in itself["matches"]] == [(os.path.join("c101", "0.png"), 101)]


def test_a_labelled_query_list_and_its_picture(built, tmp_path, capsys):
    queries = tmp_path / "queries.txt"
    queries.write_text("c102/1.png 102\nc103/2.png 103\n")
    search.main(["--index_dir", built["index_dir"], "--query_list", str(queries), "--data_dir", built["data_dir"],
                 "--top_k", "4", "--picture", str(tmp_path / "p.png")])
    out = capsys.readouterr().out
    assert "(label 102):" in out and "(label 103):" in out and len([l for l in out.splitlines() if l.startswith("  ")]) == 8
    cell = visualize.BORDER * 2 + 96 + visualize.TEXT_HEIGHT
    with Image.open(tmp_path / "p.png") as picture:  # two rows: each query and its 4 matches
        assert picture.size[1] == visualize.MARGIN + 2 * (cell + visualize.MARGIN)
        assert picture.size[0] > visualize.cell_left(4, 96) + 96 > visualize.cell_left(3, 96) + 96


def test_bad_queries_are_one_line_errors(built, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    with pytest.raises(UserError, match="cannot read image .*broken.png"):
        search.main(["--index_dir", built["index_dir"], "--query", str(broken)])
    with pytest.raises(UserError, match="--top_k must be at least 1"):
        search.main(["--index_dir", built["index_dir"], "--query", built["stranger"], "--top_k", "0"])
    with pytest.raises(UserError, match="give a query image"):
        search.main(["--index_dir", built["index_dir"]])


def test_query_expansion_equals_a_numpy_reference_on_the_gallery_vectors(built, tmp_path, capsys):
    features = np.load(os.path.join(built["dump_dir"], "features.npy"))
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    with open(os.path.join(built["dump_dir"], "paths.txt")) as f:
        paths = f.read().splitlines()
    query = features[5]
    sims = features @ query
    best = np.argsort(-sims, kind="stable")[:3]
    expanded = query + (np.maximum(sims[best], 0) ** 2) @ features[best]  # alpha-QE, k 3, alpha 2
    expanded /= np.linalg.norm(expanded)
    want = np.argsort(-(features @ expanded), kind="stable")[:5]
    search.main(["--index_dir", built["index_dir"], "--query", paths[5], "--top_k", "5",
                 "--query_expansion", "3,2", "--output", str(tmp_path / "r.jsonl")])
    matches = json.loads((tmp_path / "r.jsonl").read_text())["matches"]
    assert [os.path.join(built["data_dir"], m["path"]) for m in matches] == [paths[i] for i in want]
    np.testing.assert_allclose([m["similarity"] for m in matches], features[want] @ expanded, atol=1e-5)
    assert "sigma^2" not in capsys.readouterr().out  # a model without uncertainty prints none
    with pytest.raises(SystemExit):
        search.main(["--index_dir", built["index_dir"], "--query", paths[5], "--query_expansion", "0,1"])


def test_re_ranking_flag_reaches_the_gallery(built, tmp_path):
    from retrieval.gallery import Gallery, ReRanking

    features = np.load(os.path.join(built["dump_dir"], "features.npy"))[5:6]  # infer.py's, by the index's model
    with open(os.path.join(built["dump_dir"], "paths.txt")) as f:
        query = f.read().splitlines()[5]
    search.main(["--index_dir", built["index_dir"], "--query", query, "--top_k", "24", "--re_ranking", "21",
                 "--output", str(tmp_path / "r.jsonl")])
    gallery = Gallery.open(built["index_dir"])
    want, = gallery.search(features, 24, re_ranking=ReRanking(21))  # the whole gallery: shortlist max(21, top_k)
    assert [m["id"] for m in json.loads((tmp_path / "r.jsonl").read_text())["matches"]] == [m.id for m in want]
    assert [m.id for m in want] != [m.id for m in gallery.search(features, 24)[0]]  # not the plain ranking


def test_an_uncertainty_model_prints_and_writes_sigma2(uncertain_index, tmp_path, capsys):
    dump = uncertain_index["dump_dir"]
    with open(os.path.join(dump, "paths.txt")) as f:
        paths = f.read().splitlines()
    sigma2 = np.load(os.path.join(dump, "uncertainty.npy"))
    search.main(["--index_dir", uncertain_index["index_dir"], "--query", paths[0], "--top_k", "2",
                 "--output", str(tmp_path / "r.jsonl")])
    record = json.loads((tmp_path / "r.jsonl").read_text())
    assert record["sigma2"] == pytest.approx(float(sigma2[0]), rel=1e-5)
    assert record["matches"][0]["sigma2"] == pytest.approx(float(sigma2[0]), rel=1e-5)  # the image itself
    assert f"(sigma^2 {sigma2[0]:.4f})" in capsys.readouterr().out
