"""The search service under load: serve.py on 127.0.0.1 and concurrent local clients.

    python bench/bench_serve.py                               # builds a ResNet18 64x64 shapes gallery first
    python bench/bench_serve.py --index_dir gallery --seconds 60 --clients 8

Two phases against one server, each `--seconds` long:
  search          `--clients` clients, each posting a query image to POST /search (top_k 10) as soon as
                  its previous answer is in: requests/s, latency p50/p90/p99 (upload -> embed -> search
                  -> JSON, measured by the client), errors.
  search+writes   the same, while one more client adds an image (POST /items) and removes an earlier
                  one (DELETE /items/{id}) in turn, every --write_interval seconds: no search may fail and
                  the item count at the end must be the start's plus adds minus removes.
Without --index_dir, a gallery is made in --work_dir: 12 classes of coloured shapes (a class = a colour
and a shape, 24 images of 80x80 each, drawn at random places and sizes), a ResNet18 at 64x64 trained for
--train_iters steps by train.py, and `index.py build --pretrained_model ... --gallery_dir ...` (speed does
not depend on how well the model is trained). The server and the clients share this machine's cores:
note the load (`uptime`) printed and recorded beside the figures. One JSON line per phase is appended to --out.
"""
import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "bench-token"
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "orange": (240, 150, 30)}
SHAPES = ("circle", "square", "triangle")
IMAGES_PER_CLASS = 24
IMAGE_SIZE = 80
QUERIES = 64


def main(argv=None):
    args = _parser().parse_args(argv)
    index_dir = args.index_dir or _make_gallery(args.work_dir, args.train_iters)
    queries = [_encode_png(image) for image in _shape_images(QUERIES, seed=1)]
    server_dir = os.path.join(args.work_dir, "served-index")  # a copy: the write phase changes it
    shutil.rmtree(server_dir, ignore_errors=True)
    shutil.copytree(index_dir, server_dir)
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} cores)", flush=True)
    with _Server(server_dir, os.path.join(args.work_dir, "serve.log")) as url:
        records = [asyncio.run(_phase(url, queries, args, writes=False)),
                   asyncio.run(_phase(url, queries, args, writes=True))]
    for record in records:
        record.update(index_dir=index_dir, load_before=[round(x, 2) for x in load], cores=os.cpu_count(),
                      commit=_commit(), date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        print(json.dumps(record), flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.writelines(json.dumps(record) + "\n" for record in records)
    failed = [r["phase"] for r in records if r["errors"] or not r.get("items_right", True)]
    if failed:
        sys.exit(f"failures in: {', '.join(failed)}")


def _parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index_dir", help="an index folder (index.py build); default: build the shapes gallery")
    parser.add_argument("--work_dir", default="/tmp/bench_serve", help="the gallery, server copy and logs go here")
    parser.add_argument("--train_iters", type=int, default=2, help="train.py steps for the shapes gallery's model")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each phase")
    parser.add_argument("--top_k", type=int, default=10)
    parser.add_argument("--write_interval", type=float, default=0.25, help="seconds between two writes")
    parser.add_argument("--out", default=os.path.join(REPO, "bench", "results", "serve.jsonl"),
                        help="append the phases' records here ('' = nowhere)")
    return parser


# ---- load --------------------------------------------------------------------------------------------------
async def _phase(url, queries, args, writes):
    import httpx

    limits = httpx.Limits(max_connections=args.clients + 1)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        start_items = (await client.get("/health")).json()["items"]
        before = (await client.get("/stats")).json()["batches"]
        deadline = time.monotonic() + args.seconds
        latencies, errors = [], []
        searchers = [_searcher(client, queries, k, deadline, args.top_k, latencies, errors)
                     for k in range(args.clients)]
        writer = _writer(client, queries, deadline, args.write_interval, errors) if writes else _nothing()
        started = time.monotonic()
        *_, (adds, removes) = await asyncio.gather(*searchers, writer)
        elapsed = time.monotonic() - started
        end_items = (await client.get("/health")).json()["items"]
        after = (await client.get("/stats")).json()["batches"]
    calls, images = after["embedding_calls"] - before["embedding_calls"], after["images"] - before["images"]
    ms = np.array(latencies) * 1000
    record = {"phase": "search+writes" if writes else "search", "clients": args.clients, "seconds": round(elapsed, 1),
              "searches": len(latencies), "searches_per_s": round(len(latencies) / elapsed, 1),
              "p50_ms": round(float(np.percentile(ms, 50)), 1), "p90_ms": round(float(np.percentile(ms, 90)), 1),
              "p99_ms": round(float(np.percentile(ms, 99)), 1), "errors": len(errors), "first_errors": errors[:3],
              "mean_embedding_batch": round(images / calls, 2) if calls else None, "items_start": start_items,
              "items_end": end_items}
    if writes:
        record.update(adds=adds, removes=removes, items_right=end_items == start_items + adds - removes)
    return record


async def _searcher(client, queries, k, deadline, top_k, latencies, errors):
    rng = random.Random(k)
    while time.monotonic() < deadline:
        body = queries[rng.randrange(len(queries))]
        sent = time.perf_counter()
        try:
            response = await client.post("/search", files={"file": ("q.png", body, "image/png")},
                                         data={"top_k": str(top_k)})
            ok = response.status_code == 200 and len(response.json()["matches"]) == top_k
            problem = None if ok else f"{response.status_code}: {response.text[:200]}"
        except Exception as err:  # a dropped connection counts as a failed search
            problem = f"{type(err).__name__}: {err}"
        if problem:
            errors.append(problem)
        else:
            latencies.append(time.perf_counter() - sent)


async def _writer(client, queries, deadline, interval, errors):
    """Add an image, then remove the one added before it, in turn; returns (adds, removes) that succeeded."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    added, adds, removes = [], 0, 0
    while time.monotonic() < deadline:
        if len(added) < 2:
            body = queries[adds % len(queries)]
            response = await client.post("/items", files={"file": ("new.png", body, "image/png")},
                                         data={"label": "added"}, headers=headers)
            if response.status_code == 201:
                added.append(response.json()["id"])
                adds += 1
            else:
                errors.append(f"add {response.status_code}: {response.text[:200]}")
        else:
            response = await client.delete(f"/items/{added.pop(0)}", headers=headers)
            if response.status_code == 200:
                removes += 1
            else:
                errors.append(f"remove {response.status_code}: {response.text[:200]}")
        await asyncio.sleep(interval)
    return adds, removes


async def _nothing():
    return 0, 0


class _Server:
    """serve.py on a free port of 127.0.0.1 with the bench token; the base URL once /health answers."""

    def __init__(self, index_dir, log_path):
        self.index_dir, self.log_path = index_dir, log_path

    def __enter__(self):
        import httpx

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, os.path.join(REPO, "serve.py"), "--index_dir", self.index_dir, "--port", str(port)],
                cwd=REPO, env=dict(os.environ, DML_SERVE_TOKEN=TOKEN), stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    return url
            except httpx.TransportError:
                time.sleep(0.3)
        self.process.kill()
        sys.exit(f"serve.py did not start; its log:\n{open(self.log_path).read()[-3000:]}")

    def __exit__(self, *exc):
        self.process.terminate()
        self.process.wait(30)


# ---- the shapes gallery ------------------------------------------------------------------------------------
def _make_gallery(work_dir, train_iters):
    """Images, a trained ResNet18 64x64 and its index in work_dir (reused when already there)."""
    index_dir = os.path.join(work_dir, "index")
    if os.path.isfile(os.path.join(index_dir, "gallery.json")):
        print(f"Using the gallery already in {index_dir}", flush=True)
        return index_dir
    images_dir, lists_dir, model_dir = (os.path.join(work_dir, name) for name in ("shapes", "lists", "model"))
    for folder in (images_dir, lists_dir, model_dir):
        shutil.rmtree(folder, ignore_errors=True)
    classes = [(colour, shape) for colour in COLOURS for shape in SHAPES]
    for number, (colour, shape) in enumerate(classes):
        folder = os.path.join(images_dir, f"{colour}-{shape}")
        os.makedirs(folder)
        rng = np.random.default_rng(number)
        for k in range(IMAGES_PER_CLASS):
            _draw(colour, shape, rng).save(os.path.join(folder, f"{k}.png"))
    _run("-m", "data.folder", "--image_dir", images_dir, "--out_dir", lists_dir)
    listed = os.path.join(lists_dir, "list.txt")
    _run("train.py", "--model=ResNet18", "--image_shape=3,64,64", "--embedding_size=128", f"--data_dir={images_dir}",
         f"--train_list={listed}", f"--val_list={listed}", f"--total_iter_num={train_iters}", "--train_batch_size=36",
         "--num_workers=0", f"--model_save_dir={model_dir}")
    _run("index.py", "build", f"--pretrained_model={os.path.join(model_dir, 'ResNet18', 'latest')}",
         f"--gallery_dir={images_dir}", f"--index_dir={index_dir}", "--num_workers=0")
    return index_dir


def _shape_images(count, seed):
    rng = np.random.default_rng(seed)
    names = [(colour, shape) for colour in COLOURS for shape in SHAPES]
    return [_draw(*names[k % len(names)], rng) for k in range(count)]


def _draw(colour, shape, rng):
    """A shape of the colour (a little varied) at a random place and size on a light, noisy background."""
    from PIL import Image, ImageDraw

    background = rng.normal(235, 12, (IMAGE_SIZE, IMAGE_SIZE, 3)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(background)
    size = int(rng.integers(28, 60))
    left, top = (int(v) for v in rng.integers(2, IMAGE_SIZE - size - 2, 2))
    fill = tuple(int(np.clip(c + rng.normal(0, 15), 0, 255)) for c in COLOURS[colour])
    draw = ImageDraw.Draw(image)
    box = (left, top, left + size, top + size)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(left + size // 2, top), (left, top + size), (left + size, top + size)], fill=fill)
    return image


def _encode_png(image):
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _run(*command):
    print("$ python " + " ".join(command), flush=True)
    subprocess.run([sys.executable, *command], cwd=REPO, check=True)


def _commit():
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, check=False, capture_output=True,
                            text=True)
    return result.stdout.strip()


if __name__ == "__main__":
    main()
