"""serve.py as a real uvicorn server on 127.0.0.1 (a free port), started and stopped by the test."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import httpx
import pytest
from served_index import exact_top_k, served_index

from retrieval.gallery import Gallery
from retrieval.service import TOKEN_ENV

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKEN = "server-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_dataset, tiny_checkpoint):
    return served_index(tmp_path_factory, tiny_dataset, tiny_checkpoint)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_server(index_dir, log_path, token=None):
    """serve.py on a free port; yields its base URL once /health answers, then stops it (SIGTERM)."""
    port = free_port()
    env = {name: value for name, value in os.environ.items() if name != TOKEN_ENV}
    if token:
        env[TOKEN_ENV] = token
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "serve.py", "--index_dir", str(index_dir), "--port", str(port)],
                                   cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, f"serve.py exited: {log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"serve.py did not answer: {log_path.read_text()[-3000:]}"
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        status = process.wait(30)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal to exit with it
    assert status in (0, -signal.SIGTERM), log_path.read_text()[-3000:]


def search(client, path, top_k=5):
    with open(path, "rb") as f:
        return client.post("/search", files={"file": (os.path.basename(path), f, "image/png")},
                           data={"top_k": str(top_k)})


def test_a_real_server_searches_while_items_come_and_go_and_persists_the_changes(served, tmp_path):
    index_dir = shutil.copytree(served["index_dir"], tmp_path / "index")
    queries = [path for path, _ in served["queries"]]
    with running_server(index_dir, tmp_path / "serve.log", TOKEN) as url, httpx.Client(base_url=url) as client:
        assert "writes need the token" in (tmp_path / "serve.log").read_text()
        exact = exact_top_k(served, 5)
        for path, (ids, _) in zip(queries, exact):
            assert [m["id"] for m in search(client, path).json()["matches"]] == ids

        failures, added = [], []

        def searcher(k):
            with httpx.Client(base_url=url, timeout=30) as own:
                for turn in range(6):
                    response = search(own, queries[(k + turn) % len(queries)])
                    if response.status_code != 200 or len(response.json()["matches"]) != 5:
                        failures.append(response.text)

        def writer():
            with httpx.Client(base_url=url, timeout=30) as own:
                for k in range(4):
                    with open(queries[k], "rb") as f:
                        response = own.post("/items", files={"file": ("new.png", f, "image/png")},
                                            data={"label": str(100 + k)}, headers=AUTH)
                    if response.status_code == 201:
                        added.append(response.json()["id"])
                    else:
                        failures.append(response.text)
                for item_id in (1, 2, added[0]):
                    if own.delete(f"/items/{item_id}", headers=AUTH).status_code != 200:
                        failures.append(f"delete {item_id}")

        threads = [threading.Thread(target=searcher, args=(k,)) for k in range(8)] + [threading.Thread(target=writer)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        stats = client.get("/stats").json()
        assert stats["items"] == 40 + 4 - 3 and client.get("/health").json()["items"] == 41
        assert stats["requests"]["searches"] == 8 + 8 * 6
        assert stats["batches"]["embedding_calls"] < stats["batches"]["images"]  # concurrent queries embedded together
        assert client.post("/search", files={"file": ("x.png", b"junk", "image/png")}).status_code == 400
        assert client.get("/health").status_code == 200

    reopened = Gallery.open(index_dir)  # what a restarted server would serve
    assert len(reopened) == 41 and [reopened.item(i) for i in (1, 2, added[0])] == [None, None, None]
    assert reopened.item(added[1]).label == 101


def test_serve_py_names_a_missing_index_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "serve.py", "--index_dir", str(tmp_path / "none")], cwd=REPO,
                            check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: index folder not found: {tmp_path / 'none'} " \
                                                     "(python index.py build writes one)"
