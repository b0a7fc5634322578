"""The HTTP service in process (FastAPI's TestClient).

Most tests run over a stand-in with the Gallery interface that embeds an image as its normalised mean
colour, so that results are known without a model; the last ones run over a real index
(tests/served_index.py): results equal search.py's and exact search's, and changes survive a restart.
"""
import asyncio
import hmac
import io
import json
import os
import shutil
import threading
import time
from typing import NamedTuple

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from served_index import exact_top_k, served_index

from retrieval.service import EmbeddingBatcher, create_app

TOKEN = "s3cret-token"
COLOURS = {0: (250, 20, 20), 1: (20, 250, 20), 2: (20, 20, 250), 3: (240, 240, 30)}  # label -> RGB


class Match(NamedTuple):
    rank: int | None
    id: int
    similarity: float | None
    path: str
    label: int
    metadata: str | None


class ColourEmbedder:
    """features = normalised mean colour (+1, so that black is not zero); records each call's batch size."""

    def __init__(self):
        self.calls = []

    def embed_images(self, images):
        self.calls.append(len(images))
        features = np.stack([image.reshape(-1, 3).mean(0) + 1 for image in images]).astype("float32")
        return features / np.linalg.norm(features, axis=1, keepdims=True)

    def embed(self, images):
        return self.embed_images(images), None  # no sigma^2: a model without uncertainty


class StandInGallery:
    """The Gallery interface (retrieval/gallery.py) over a dict, exact inner-product search."""

    def __init__(self, root):
        self.data_dir = str(root / "data")
        self.uploads_dir = str(root / "index" / "uploads")
        self.embedder = ColourEmbedder()
        self.items = {}
        self.lock = threading.Lock()
        os.makedirs(self.data_dir)

    def search(self, features, top_k, threshold=None, query_expansion=None, re_ranking=None):
        assert query_expansion is None and re_ranking is None
        ids = sorted(self.items)
        gallery = np.stack([self.items[i][0] for i in ids])
        results = []
        for query in features:
            scores = gallery @ query
            order = np.argsort(-scores, kind="stable")[:top_k]
            matches = [Match(rank + 1, ids[j], float(scores[j]), *self.items[ids[j]][1:])
                       for rank, j in enumerate(order)]
            results.append([m for m in matches if threshold is None or m.similarity >= threshold])
        return results

    def item(self, item_id):
        if item_id not in self.items:
            return None
        return Match(None, item_id, None, *self.items[item_id][1:])

    def image_path(self, item_id):
        if item_id not in self.items:
            return None
        path = os.path.realpath(os.path.join(self.data_dir, self.items[item_id][1]))
        inside = any(path.startswith(os.path.realpath(root) + os.sep) for root in (self.data_dir, self.uploads_dir))
        return path if inside else None

    def add(self, features, paths, labels, metadata=None, sigma2=None):
        with self.lock:
            first = max(self.items, default=-1) + 1
            new = dict(self.items)
            for k, (feature, path, label) in enumerate(zip(features, paths, labels)):
                new[first + k] = (feature, path, label, None if metadata is None else metadata[k])
            self.items = new
            return list(range(first, first + len(paths)))

    def remove(self, ids):
        with self.lock:
            new = {i: item for i, item in self.items.items() if i not in set(ids)}
            removed, self.items = len(self.items) - len(new), new
            return removed

    def stats(self):
        return {"items": len(self.items), "dim": 3, "index_type": "Flat", "backend": "stand-in",
                "fingerprint": "colour-mean"}


def png_bytes(colour, size=(12, 12), mode="RGB"):
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def gallery(tmp_path):
    gallery = StandInGallery(tmp_path)
    for label, colour in COLOURS.items():
        path = f"c{label}.png"
        (tmp_path / "data" / path).write_bytes(png_bytes(colour))
        gallery.add(gallery.embedder.embed_images([np.full((2, 2, 3), colour, np.uint8)]), [path], [label])
    gallery.embedder.calls.clear()
    return gallery


def client_of(gallery, **settings):
    return TestClient(create_app(gallery, **settings))


def search(client, colour, **fields):
    return client.post("/search", files={"file": ("q.png", png_bytes(colour), "image/png")},
                       data={k: str(v) for k, v in fields.items()})


def test_search_ranks_the_gallery_by_similarity(gallery):
    with client_of(gallery) as client:
        response = search(client, (230, 40, 30), top_k=3)
    assert response.status_code == 200
    body = response.json()
    assert body["matches"][0]["label"] == 0 and len(body["matches"]) == 3
    assert [m["rank"] for m in body["matches"]] == [1, 2, 3]
    similarities = [m["similarity"] for m in body["matches"]]
    assert similarities == sorted(similarities, reverse=True) and similarities[0] > 0.99
    first = body["matches"][0]
    assert first == {"rank": 1, "id": 0, "similarity": first["similarity"], "path": "c0.png", "label": 0,
                     "metadata": None, "image_url": "/items/0/image"}
    assert body["no_match"] is False and body["top_k"] == 3


def test_a_threshold_above_every_match_answers_no_match(gallery):
    with client_of(gallery) as client:
        near = search(client, (150, 120, 90), top_k=4).json()["matches"]
        threshold = near[0]["similarity"] + 1e-3
        body = search(client, (150, 120, 90), top_k=4, threshold=threshold).json()
        kept = search(client, (150, 120, 90), top_k=4, threshold=near[1]["similarity"]).json()
    assert body["matches"] == [] and body["no_match"] is True
    assert [m["id"] for m in kept["matches"]] == [m["id"] for m in near[:2]]


def test_batch_search_answers_each_file_in_order_as_single_searches_do(gallery):
    colours = [(20, 240, 20), (250, 10, 10), (30, 30, 200)]
    with client_of(gallery) as client:
        files = [("files", (f"q{k}.png", png_bytes(c), "image/png")) for k, c in enumerate(colours)]
        batch = client.post("/search/batch", files=files, data={"top_k": "2"}).json()["results"]
        single = [search(client, c, top_k=2).json()["matches"] for c in colours]
    assert [r["file"] for r in batch] == ["q0.png", "q1.png", "q2.png"]
    assert [r["matches"] for r in batch] == single
    assert [r["matches"][0]["label"] for r in batch] == [1, 0, 2]


def test_items_and_their_images(gallery, tmp_path):
    gallery.add(np.ones((1, 3), "float32") / np.sqrt(3), ["../outside.png"], [9])  # points out of data_dir
    (tmp_path / "outside.png").write_bytes(png_bytes((0, 0, 0)))
    with client_of(gallery) as client:
        assert client.get("/items/2").json() == {"rank": None, "id": 2, "similarity": None, "path": "c2.png",
                                                 "label": 2, "metadata": None, "image_url": "/items/2/image"}
        image = client.get("/items/2/image")
        assert image.status_code == 200 and image.content == (tmp_path / "data" / "c2.png").read_bytes()
        assert image.headers["content-type"] == "image/png"
        for url in ("/items/99", "/items/99/image", "/items/4/image"):
            response = client.get(url)
            assert response.status_code == 404 and "error" in response.json(), url
        assert client.get("/items/abc").status_code == 400


def test_health_and_stats_count_requests_and_search_latency(gallery):
    with client_of(gallery) as client:
        assert client.get("/health").json() == {"status": "ok", "items": 4}
        for _ in range(5):
            search(client, (10, 200, 10))
        client.get("/items/99")
        stats = client.get("/stats").json()
    assert (stats["items"], stats["index_type"], stats["fingerprint"]) == (4, "Flat", "colour-mean")
    assert stats["requests"]["searches"] == 5
    assert stats["requests"]["by_status"] == {"200": 6, "404": 1}  # /health, 5 searches (this /stats not yet)
    latency = stats["search_latency_ms"]
    assert latency["window"] == 5 and 0 < latency["p50"] <= latency["p90"] <= latency["p99"]
    assert stats["batches"]["images"] == 5


def test_bad_input_gets_a_json_error_and_the_server_keeps_serving(gallery):
    with client_of(gallery, max_file_bytes=20_000, max_image_pixels=50 * 50) as client:
        cases = {
            "not an image": (client.post("/search", files={"file": ("a.png", b"not a png", "image/png")}), 400),
            "empty file": (client.post("/search", files={"file": ("a.png", b"", "image/png")}), 400),
            "too large a file": (client.post("/search", files={"file": ("a.bmp", b"\0" * 30_000, "image/bmp")}),
                                 413),
            "far too large a body": (client.post("/search", files={"file": ("a.bmp", b"\0" * 200_000, "image/bmp")}),
                                     413),
            "streamed body past the limit": (client.post("/search", content=(b"-" * 10_000 for _ in range(20)),
                                                         headers={"content-type": "multipart/form-data; boundary=b"}),
                                             413),
            "too many pixels": (client.post("/search", files={"file": ("a.png", png_bytes((1, 2, 3), (60, 60)),
                                                                       "image/png")}), 400),
            "text content type": (client.post("/search", files={"file": ("a.txt", png_bytes((1, 2, 3)),
                                                                         "text/plain")}), 415),
            "json body": (client.post("/search", json={"file": "x"}), 415),
            "no file": (client.post("/search", files={"other": ("a.png", png_bytes((1, 2, 3)), "image/png")}),
                        400),
            "top_k 0": (search(client, (1, 2, 3), top_k=0), 400),
            "top_k text": (search(client, (1, 2, 3), top_k="ten"), 400),
            "threshold nan": (search(client, (1, 2, 3), threshold="nan"), 400),
            "unknown id": (client.get("/items/12345"), 404),
        }
        for name, (response, status) in cases.items():
            assert response.status_code == status, (name, response.text)
            assert response.json()["error"], name
        assert "more than the limit of 2500" in cases["too many pixels"][0].json()["error"]
        assert "not a readable image" in cases["not an image"][0].json()["error"]
        assert search(client, (250, 20, 20)).json()["matches"][0]["label"] == 0


def test_an_oversized_batch_is_refused(gallery):
    with client_of(gallery, max_batch_files=2) as client:
        files = [("files", (f"q{k}.png", png_bytes((k, k, k)), "image/png")) for k in range(3)]
        response = client.post("/search/batch", files=files)
    assert response.status_code == 413 and "more than the limit of 2" in response.json()["error"]


def add(client, colour, label, token=TOKEN, metadata=None):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    data = {"label": str(label)} if metadata is None else {"label": str(label), "metadata": metadata}
    return client.post("/items", files={"file": ("new.png", png_bytes(colour), "image/png")}, data=data,
                       headers=headers)


def test_writes_are_refused_without_a_configured_token(gallery):
    with client_of(gallery) as client:
        refused = [add(client, (1, 2, 3), 5, token="anything"), client.delete("/items/0")]
    for response in refused:
        assert response.status_code == 403 and "without a token" in response.json()["error"]
    assert len(gallery.items) == 4


def test_writes_need_the_token_compared_in_constant_time(gallery, monkeypatch):
    compared, constant_time = [], hmac.compare_digest

    def spy(given, expected):
        compared.append((given, expected))
        return constant_time(given, expected)

    monkeypatch.setattr("retrieval.service.hmac.compare_digest", spy)
    with client_of(gallery, token=TOKEN) as client:
        assert add(client, (1, 2, 3), 5, token=None).status_code == 401
        assert add(client, (1, 2, 3), 5, token="wrong").status_code == 401
        assert client.delete("/items/0", headers={"Authorization": "Basic " + TOKEN}).status_code == 401
        assert len(gallery.items) == 4
        assert compared[-1] == (b"wrong", TOKEN.encode())
        added = add(client, (200, 0, 200), 7, metadata="a purple square")
        assert added.status_code == 201
        item = added.json()
        assert (item["label"], item["metadata"]) == (7, "a purple square")
        stored = os.path.join(gallery.data_dir, item["path"])
        assert os.path.dirname(os.path.realpath(stored)) == os.path.realpath(gallery.uploads_dir)
        assert client.get(item["image_url"]).content == png_bytes((200, 0, 200))
        assert search(client, (200, 0, 200), top_k=1).json()["matches"][0]["id"] == item["id"]
        assert client.delete(f"/items/{item['id']}", headers={"Authorization": f"Bearer {TOKEN}"}).json() == {
            "removed": item["id"], "items": 4}
        assert os.listdir(gallery.uploads_dir) == []  # an uploaded image goes with its item
        assert client.delete(f"/items/{item['id']}", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404
        assert add(client, (0, 0, 0), " ").status_code == 400
        assert add(client, (0, 0, 0), "cat").json()["label"] == "cat"  # a class name where labels are not numbers


def test_a_refused_upload_leaves_no_file_behind(gallery):
    with client_of(gallery, token=TOKEN) as client:
        response = client.post("/items", files={"file": ("x.png", b"junk", "image/png")}, data={"label": "1"},
                               headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 400
    assert not os.path.exists(gallery.uploads_dir) or os.listdir(gallery.uploads_dir) == []


def test_the_page_and_its_assets_are_served_and_need_no_network(gallery):
    with client_of(gallery) as client:
        page = client.get("/")
        assets = [client.get(f"/static/{name}") for name in ("app.js", "style.css")]
        docs = client.get("/docs")
    assert page.status_code == 200 and 'id="query-file"' in page.text
    assert all(asset.status_code == 200 for asset in assets)
    assert docs.status_code == 200  # OpenAPI docs
    for text in [page.text] + [asset.text for asset in assets]:
        assert "http://" not in text and "https://" not in text  # works offline: nothing fetched from elsewhere


def test_concurrent_requests_are_embedded_together():
    release = threading.Event()
    calls = []

    def embed(images):
        calls.append(len(images))
        release.wait(5)  # the first call holds the worker while the others queue up
        return np.stack([[float(image[0, 0, 0]), 1.0] for image in images]).astype("float32")

    batcher = EmbeddingBatcher(embed, max_images=8, wait_ms=50)
    batcher.start()
    results = {}

    def one_request(value):
        image = np.full((2, 2, 3), value, np.uint8)
        results[value] = asyncio.run(batcher.embed([image]))

    threads = [threading.Thread(target=one_request, args=(v,)) for v in range(1, 8)]
    threads[0].start()
    time.sleep(0.2)
    for thread in threads[1:]:
        thread.start()
    time.sleep(0.2)
    release.set()
    for thread in threads:
        thread.join()
    batcher.stop()
    assert calls == [1, 6]
    assert batcher.summary() == {"embedding_calls": 2, "images": 7, "mean_batch": 3.5}
    assert all(results[v].tolist() == [[v, 1.0]] for v in range(1, 8))


def test_a_failing_image_fails_only_its_own_request():
    def embed(images):
        if any(image[0, 0, 0] == 13 for image in images):
            raise ValueError("non-finite embedding")
        return np.stack([[float(image[0, 0, 0])] for image in images]).astype("float32")

    batcher = EmbeddingBatcher(embed, max_images=8, wait_ms=20)
    batcher.start()
    outcome = {}

    def one_request(value):
        try:
            outcome[value] = asyncio.run(batcher.embed([np.full((1, 1, 3), value, np.uint8)])).item()
        except ValueError as err:
            outcome[value] = str(err)

    threads = [threading.Thread(target=one_request, args=(v,)) for v in (12, 13, 14)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    batcher.stop()
    assert outcome == {12: 12.0, 13: "non-finite embedding", 14: 14.0}


# ---- over a real index -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_dataset, tiny_checkpoint):
    return served_index(tmp_path_factory, tiny_dataset, tiny_checkpoint)


def upload(path):
    with open(path, "rb") as f:
        return (os.path.basename(path), f.read(), "image/png")


def test_the_api_answers_as_search_py_and_exact_search_do(served, tmp_path):
    import search as search_script
    from retrieval.gallery import Gallery

    search_script.main(["--index_dir", served["index_dir"], "--query_list", served["query_list"], "--data_dir",
                        served["data_dir"], "--top_k", "5", "--output", str(tmp_path / "cli.jsonl")])
    cli = [json.loads(line)["matches"] for line in (tmp_path / "cli.jsonl").read_text().splitlines()]
    query_paths = [path for path, _ in served["queries"]]
    with client_of(Gallery.open(served["index_dir"])) as client:
        single = [client.post("/search", files={"file": upload(path)}, data={"top_k": "5"}).json()["matches"]
                  for path in query_paths]
        batch = client.post("/search/batch", files=[("files", upload(path)) for path in query_paths],
                            data={"top_k": "5"}).json()["results"]
    exact = exact_top_k(served, 5)
    assert len(exact) == len(single) == len(batch) == len(cli) == 8
    for (ids, similarities), *answers in zip(exact, single, [r["matches"] for r in batch], cli):
        for matches in answers:
            assert [m["id"] for m in matches] == ids
            np.testing.assert_allclose([m["similarity"] for m in matches], similarities, atol=1e-5)
        assert [m["label"] for m in answers[0]] == [m["label"] for m in answers[2]]


def test_changes_persist_across_a_restart(served, tmp_path):
    from retrieval.gallery import Gallery

    index_dir = shutil.copytree(served["index_dir"], tmp_path / "index")
    query = served["queries"][0][0]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    outside = tmp_path / "outside.png"
    outside.write_bytes(png_bytes((9, 9, 9)))
    gallery = Gallery.open(index_dir)
    with client_of(gallery, token=TOKEN) as client:
        added = client.post("/items", files={"file": upload(query)}, data={"label": "42", "metadata": "the query"},
                            headers=auth).json()
        data_image = gallery.image_path(0)
        assert client.delete("/items/0", headers=auth).json() == {"removed": 0, "items": 40}
        assert os.path.isfile(data_image)  # the data folder is never touched
        best = client.post("/search", files={"file": upload(query)}, data={"top_k": "1"}).json()["matches"][0]
    assert best["id"] == added["id"] and best["similarity"] == pytest.approx(1.0, abs=1e-5)
    stray, = gallery.add(gallery.embedder.embed_files([str(outside)]), [str(outside)], [7])  # outside both folders

    reopened = Gallery.open(index_dir)
    assert reopened.stats()["items"] == 41
    with client_of(reopened) as client:
        item = client.get(f"/items/{added['id']}").json()
        assert (item["label"], item["metadata"]) == (42, "the query")
        assert client.get(item["image_url"]).content == upload(query)[1]
        assert client.get("/items/0").status_code == 404
        assert client.post("/search", files={"file": upload(query)}, data={"top_k": "1"}).json()["matches"][0][
            "id"] == added["id"]
        assert client.get(f"/items/{stray}").status_code == 200
        assert client.get(f"/items/{stray}/image").status_code == 404  # only the data and uploads folders are served


def test_a_request_cancelled_while_queued_does_not_stop_the_worker():
    release = threading.Event()
    calls = []

    def embed(images):
        calls.append(len(images))
        release.wait(5)
        return np.ones((len(images), 2), "float32")

    batcher = EmbeddingBatcher(embed, max_images=1, wait_ms=0)
    batcher.start()

    async def give_up_then_ask_again():
        first = asyncio.ensure_future(batcher.embed([np.zeros((1, 1, 3), np.uint8)]))
        await asyncio.sleep(0.1)  # the worker holds the first request
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(batcher.embed([np.zeros((1, 1, 3), np.uint8)]), 0.1)  # cancelled while queued
        release.set()
        await first
        return await asyncio.wait_for(batcher.embed([np.zeros((1, 1, 3), np.uint8)] * 3), 10)

    features = asyncio.run(give_up_then_ask_again())
    batcher.stop()
    assert features.shape == (3, 2) and calls == [1, 3]  # the cancelled request was never embedded


def test_query_expansion_answers_as_the_gallery_and_bad_values_are_refused(served):
    from evaluation.postprocess import Expansion
    from retrieval.gallery import Gallery

    query = served["queries"][0][0]
    gallery = Gallery.open(served["index_dir"])
    with client_of(gallery) as client:
        api = client.post("/search", files={"file": upload(query)}, data={"top_k": "5", "query_expansion": "3,2"})
        plain = client.post("/search", files={"file": upload(query)}, data={"top_k": "5"}).json()
        refused = client.post("/search", files={"file": upload(query)}, data={"query_expansion": "3"})
    want, = gallery.search(gallery.embedder.embed_files([query]), 5, query_expansion=Expansion(3, 2.0))
    assert [m["id"] for m in api.json()["matches"]] == [m.id for m in want]
    np.testing.assert_allclose([m["similarity"] for m in api.json()["matches"]], [m.similarity for m in want],
                               atol=1e-5)
    expanded_similarities = [m["similarity"] for m in api.json()["matches"]]
    assert expanded_similarities != pytest.approx([m["similarity"] for m in plain["matches"]])  # not the plain query
    assert plain["sigma2"] is None and {m["sigma2"] for m in plain["matches"]} == {None}  # no uncertainty
    assert refused.status_code == 400 and "K,ALPHA" in refused.json()["error"]


def test_re_ranking_answers_as_the_gallery(served):
    from retrieval.gallery import Gallery, ReRanking

    queries = [path for path, _ in served["queries"][:2]]
    gallery = Gallery.open(served["index_dir"])
    with client_of(gallery) as client:
        one = client.post("/search", files={"file": upload(queries[0])}, data={"top_k": "8", "re_ranking": "true"})
        batch = client.post("/search/batch", files=[("files", upload(path)) for path in queries],
                            data={"top_k": "8", "re_ranking": "25"})
    features = gallery.embedder.embed_files(queries)
    assert [m["id"] for m in one.json()["matches"]] == [m.id for m in gallery.search(features[:1], 8,
                                                                                     re_ranking=ReRanking())[0]]
    want = gallery.search(features, 8, re_ranking=ReRanking(25))
    assert [[m["id"] for m in result["matches"]] for result in batch.json()["results"]] == [[m.id for m in row]
                                                                                            for row in want]
    assert want != gallery.search(features, 8)  # the re-ranking changed some ranking: the test can tell


@pytest.mark.parametrize("fields, message", [
    ({"re_ranking": "7"}, "re_ranking: the re-ranking shortlist must hold at least 21 candidates"),
    ({"re_ranking": "maybe"}, "re_ranking: re-ranking is true, false or a shortlist size"),
    ({"re_ranking": "5000"}, "re_ranking: a shortlist of at most 1000 candidates, not 5000"),
    ({"re_ranking": "true", "query_expansion": "3,2"}, "re_ranking expands the queries itself"),
])
def test_bad_re_ranking_fields_are_400_before_any_search(gallery, fields, message):
    with client_of(gallery) as client:
        response = search(client, (230, 40, 30), **fields)
    assert response.status_code == 400 and response.json()["error"].startswith(message)


def test_an_uncertainty_model_gives_the_query_and_match_sigma2(uncertain_index):
    from retrieval.gallery import Gallery

    dump = uncertain_index["dump_dir"]
    with open(os.path.join(dump, "paths.txt")) as f:
        paths = f.read().splitlines()
    sigma2 = np.load(os.path.join(dump, "uncertainty.npy"))
    gallery = Gallery.open(uncertain_index["index_dir"])
    with client_of(gallery) as client:
        result = client.post("/search", files={"file": upload(paths[3])}, data={"top_k": "3"}).json()
    assert result["sigma2"] == pytest.approx(float(sigma2[3]), rel=1e-5)
    assert [m["sigma2"] for m in result["matches"]] == [gallery.item(m["id"]).sigma2 for m in result["matches"]]
    assert result["matches"][0]["sigma2"] == pytest.approx(float(sigma2[3]), rel=1e-5)  # the image itself
