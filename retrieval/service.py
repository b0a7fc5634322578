"""The HTTP search service over a gallery index: `create_app(gallery)` builds the FastAPI app, serve.py runs it.

Endpoints (OpenAPI docs at /docs): POST /search and /search/batch (multipart: image(s) in `file`/`files`,
form fields `top_k`, `threshold`, `query_expansion` "K,ALPHA", `re_ranking` true/false/SHORTLIST; a result
carries the query's `sigma2` and each match's, null unless the model predicts uncertainty), GET /items/{id} and
/items/{id}/image, GET /health, GET /stats, and the write endpoints POST /items and DELETE /items/{id}, which need
`Authorization: Bearer TOKEN`.
The web page is GET / (retrieval/static/).

Embedding and search go only through the Gallery interface (retrieval/gallery.py). One worker thread owns
the embedder: requests put their decoded images on its queue and it embeds whatever has gathered (up to
`batch_images` images, waiting at most `batch_wait_ms` after the first) in one call, so that under load the
model runs on batches and never on the event loop's thread. Searches run in the thread pool; Gallery lets
them run while a write swaps in the new state. Every error is JSON {"error": "..."} with its status code.
"""
import asyncio
import collections
import hmac
import os
import queue
import re
import shutil
import tempfile
import threading
import time
import uuid
from concurrent.futures import Future
from contextlib import asynccontextmanager
from typing import Annotated, NamedTuple

import numpy as np
from fastapi import Depends, FastAPI, File, Form, Header, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from reader.decode import MAX_PIXELS, BadImageError, load_rgb
from utility.errors import UserError

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
TOKEN_ENV = "DML_SERVE_TOKEN"

MAX_FILE_BYTES = 20 * 1024 * 1024   # one uploaded image
MAX_BATCH_FILES = 32                # images in one POST /search/batch
FORM_OVERHEAD_BYTES = 64 * 1024     # multipart boundaries, headers and the small fields around the images
DEFAULT_TOP_K = 10
MAX_TOP_K = 1000
BATCH_IMAGES = 16                   # micro-batching: most images embedded in one call
BATCH_WAIT_MS = 5.0                 # ... and the longest wait for company after the first image
LATENCY_WINDOW = 10_000             # searches whose latency /stats summarises
WARM_UP_IMAGE = np.full((32, 32, 3), 128, np.uint8)  # embedded once at start-up, in the worker thread
# Content types an image upload may declare; browsers send image/*, some clients octet-stream.
_ACCEPTED_TYPES = re.compile(r"^(image/[\w.+-]+|application/octet-stream)$")
_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,5}$")
# The search endpoints' form fields.
TopK = Annotated[int, Form(ge=1, le=MAX_TOP_K, description="matches per query")]
Threshold = Annotated[float | None, Form(allow_inf_nan=False, description="drop matches less similar than this "
                                                                           "(none left: no match)")]
QueryExpansion = Annotated[str | None, Form(description="K,ALPHA: search with each query plus its K best matches' "
                                                        "gallery vectors weighted by similarity**ALPHA (alpha-QE)")]
ReRankingField = Annotated[str | None, Form(description="true, false or a shortlist size (21-1000): order the query's "
                                                        "shortlist of most similar items (true: 100) by k-reciprocal "
                                                        "re-ranked distance; similarities stay the cosine's")]


def create_app(gallery, token=None, *, max_file_bytes=MAX_FILE_BYTES, max_image_pixels=MAX_PIXELS,
               max_batch_files=MAX_BATCH_FILES, batch_images=BATCH_IMAGES, batch_wait_ms=BATCH_WAIT_MS):
    """The FastAPI app serving `gallery` (a retrieval.gallery.Gallery).

    token: the bearer token of the write endpoints; None or "" refuses every write (403).
    max_file_bytes: larger uploads get 413. max_image_pixels: larger images get 400 (reader.decode.load_rgb's
    rule: a JPEG is first decoded at 1/2..1/8 size to fit; 0 = no limit).
    """
    batcher = EmbeddingBatcher(lambda images: gallery.embedder.embed(images), batch_images, batch_wait_ms)
    stats = ServiceStats()

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        await batcher.embed([WARM_UP_IMAGE], counted=False)  # the model's first run is slow: not on a request
        try:
            yield
        finally:
            batcher.stop()

    app = FastAPI(title="Gallery search", lifespan=lifespan,
                  description="Search a gallery index for the images most like an uploaded one.")
    one_file_body = max_file_bytes + FORM_OVERHEAD_BYTES
    app.add_middleware(LimitRequestBody, limits={"/search": one_file_body, "/items": one_file_body,
                                                 "/search/batch": max_batch_files * one_file_body})
    app.add_middleware(CountRequests, stats=stats)
    _add_error_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    def read_upload(upload, keep_as=None):
        return _read_upload(upload, max_file_bytes, max_image_pixels, keep_as)

    async def embed_and_search(images, top_k, threshold, query_expansion, re_ranking):
        """(per image its matches, per image its sigma^2 or None)."""
        expansion, reranking = _expansion(query_expansion), _re_ranking(re_ranking)
        if expansion and reranking:
            from evaluation.postprocess import expansions_clash
            raise HTTPException(400, expansions_clash("re_ranking", "query_expansion"))
        features, sigma2 = await batcher.embed(images)
        results = await run_in_threadpool(gallery.search, features, top_k, threshold, expansion, reranking)
        return results, [None] * len(images) if sigma2 is None else sigma2.tolist()

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(os.path.join(STATIC_DIR, "index.html"))

    @app.post("/search", dependencies=[Depends(_require_multipart)])
    async def search(file: Annotated[UploadFile, File(description="the query image")],
                     top_k: TopK = DEFAULT_TOP_K, threshold: Threshold = None,
                     query_expansion: QueryExpansion = None, re_ranking: ReRankingField = None):
        """The gallery items most similar to the image, best first; `matches` is empty ("no match") when
        none reaches the threshold."""
        image = await run_in_threadpool(read_upload, file)
        (matches,), (sigma2,) = await embed_and_search([image], top_k, threshold, query_expansion, re_ranking)
        return _search_result(matches, top_k, threshold, sigma2)

    @app.post("/search/batch", dependencies=[Depends(_require_multipart)])
    async def search_batch(files: Annotated[list[UploadFile], File(description="the query images")],
                           top_k: TopK = DEFAULT_TOP_K, threshold: Threshold = None,
                           query_expansion: QueryExpansion = None, re_ranking: ReRankingField = None):
        """POST /search for several images at once: one result per file, in order."""
        if len(files) > max_batch_files:
            raise HTTPException(413, f"{len(files)} files, more than the limit of {max_batch_files} per request")
        images = [await run_in_threadpool(read_upload, file) for file in files]
        results, sigma2 = await embed_and_search(images, top_k, threshold, query_expansion, re_ranking)
        return {"results": [{"file": file.filename, **_search_result(matches, top_k, threshold, query_sigma2)}
                            for file, matches, query_sigma2 in zip(files, results, sigma2)]}

    @app.get("/items/{item_id}")
    async def item(item_id: int):
        """One gallery item: id, path, label, metadata."""
        return _match_json(_known_item(gallery, item_id))

    @app.get("/items/{item_id}/image")
    async def item_image(item_id: int):
        """The item's image file (only files inside the index's data or uploads folder are served)."""
        path = gallery.image_path(item_id)
        if path is None or not os.path.isfile(path):
            raise HTTPException(404, f"no image for item {item_id}")
        return FileResponse(path)

    @app.get("/health")
    async def health():
        return {"status": "ok", "items": gallery.stats()["items"]}

    @app.get("/stats")
    async def service_stats():
        """The index (items, index type, model fingerprint, ...) and the service: requests served, search
        latency percentiles, embedding batches."""
        return {**_jsonable(gallery.stats()), **stats.summary(), "batches": batcher.summary()}

    def require_token(authorization: Annotated[str | None, Header(description="Bearer TOKEN")] = None):
        _check_token(token, authorization)

    @app.post("/items", status_code=201, dependencies=[Depends(_require_multipart), Depends(require_token)])
    async def add_item(file: Annotated[UploadFile, File(description="the image to add")],
                       label: Annotated[str, Form(description="its label: an integer or a class name")],
                       metadata: Annotated[str | None, Form(description="free text kept with the item")] = None):
        """Add an image to the gallery (kept in the index's uploads folder); returns the new item."""
        label_value = _parse_label(label)
        stored = _upload_path(gallery.uploads_dir, file.filename)
        try:
            image = await run_in_threadpool(read_upload, file, stored)
            features, sigma2 = await batcher.embed([image])
            item_id, = await run_in_threadpool(gallery.add, features, [stored], [label_value],
                                               None if metadata is None else [metadata], sigma2)
        except BaseException:
            _remove_quietly(stored)
            raise
        return _match_json(_known_item(gallery, item_id))

    @app.delete("/items/{item_id}", dependencies=[Depends(require_token)])
    async def remove_item(item_id: int):
        """Remove an item from the gallery (and its image, when it was uploaded through POST /items)."""
        image = gallery.image_path(item_id)
        if not await run_in_threadpool(gallery.remove, [item_id]):
            raise HTTPException(404, f"no item {item_id}")
        if image and os.path.dirname(image) == os.path.realpath(gallery.uploads_dir):
            _remove_quietly(image)
        return {"removed": item_id, "items": gallery.stats()["items"]}

    return app


class EmbeddingBatcher:
    """One worker thread that embeds the images of concurrent requests together.

    `await embed(images)` queues the images and returns what embed_images gives for them. The worker takes the
    first job waiting, then more as they come, until it holds `max_images` images or `wait_ms` have passed, and
    embeds them in one call of `embed_images(list of RGB arrays)` -> float32 [n, D], or a tuple of per-image
    arrays (or None) such as QueryEmbedder.embed's (features, sigma^2), each cut into the jobs' rows.
    """

    def __init__(self, embed_images, max_images=BATCH_IMAGES, wait_ms=BATCH_WAIT_MS):
        self.embed_images = embed_images
        self.max_images = max_images
        self.wait_s = wait_ms / 1000
        self._jobs = queue.Queue()
        self._thread = None
        self._lock = threading.Lock()
        self.batch_sizes = collections.Counter()  # images per embedding call -> number of calls

    def start(self):
        self._thread = threading.Thread(target=self._work, name="embedding-worker", daemon=True)
        self._thread.start()

    def stop(self):
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None

    async def embed(self, images, counted=True):
        """The features of `images` (a list of HxWx3 uint8 RGB arrays), float32 [n, D]."""
        future = Future()
        self._jobs.put(_Job(images, future, counted))
        return await asyncio.wrap_future(future)

    def summary(self):
        with self._lock:
            calls = sum(self.batch_sizes.values())
            images = sum(size * count for size, count in self.batch_sizes.items())
        return {"embedding_calls": calls, "images": images, "mean_batch": round(images / calls, 2) if calls else 0}

    def _work(self):
        while True:
            job = self._jobs.get()
            if job is None:
                return
            jobs, stopping = self._gather([job])
            # a request cancelled meanwhile (its client gone) is left out; the others can no longer be cancelled
            self._run([queued for queued in jobs if queued.future.set_running_or_notify_cancel()])
            if stopping:
                return

    def _gather(self, jobs):
        """More queued jobs to embed with `jobs`: until max_images images or wait_s after the first."""
        count = len(jobs[0].images)
        deadline = time.monotonic() + self.wait_s
        while count < self.max_images:
            try:
                job = self._jobs.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
            count += len(job.images)
        return jobs, False

    def _run(self, jobs):
        if not jobs:
            return
        images = [image for job in jobs for image in job.images]
        try:
            features = self.embed_images(images)
        except Exception as err:
            if len(jobs) > 1:  # one request's image must not fail the others': embed them one job at a time
                for job in jobs:
                    self._run([job])
                return
            jobs[0].future.set_exception(err)
            return
        counted = sum(len(job.images) for job in jobs if job.counted)
        if counted:
            with self._lock:
                self.batch_sizes[counted] += 1
        start = 0
        for job in jobs:
            job.future.set_result(_rows(features, start, start + len(job.images)))
            start += len(job.images)


def _rows(embedded, start, stop):
    """Rows start:stop of an array, or of each array of a tuple (None stays None)."""
    if isinstance(embedded, tuple):
        return tuple(None if part is None else part[start:stop] for part in embedded)
    return embedded[start:stop]


class _Job(NamedTuple):
    images: list
    future: Future
    counted: bool  # in the batch statistics (the start-up warm-up is not)


class ServiceStats:
    """Requests answered (by status) and the latency of successful searches, for GET /stats."""

    SEARCH_PATHS = ("/search", "/search/batch")

    def __init__(self):
        self._lock = threading.Lock()
        self.started = time.time()
        self.by_status = collections.Counter()
        self.searches = 0
        self.latencies_ms = collections.deque(maxlen=LATENCY_WINDOW)

    def record(self, path, status, seconds):
        with self._lock:
            self.by_status[status] += 1
            if path in self.SEARCH_PATHS and status == 200:
                self.searches += 1
                self.latencies_ms.append(seconds * 1000)

    def summary(self):
        with self._lock:
            latencies = np.array(self.latencies_ms)
            served = {"total": sum(self.by_status.values()), "searches": self.searches,
                      "by_status": {str(code): n for code, n in sorted(self.by_status.items())}}
        percentiles = ({f"p{p}": round(float(np.percentile(latencies, p)), 2) for p in (50, 90, 99)}
                       if len(latencies) else {})
        return {"requests": served, "uptime_s": round(time.time() - self.started, 1),
                "search_latency_ms": {"window": len(latencies), **percentiles}}


class CountRequests:
    """ASGI middleware: every answered HTTP request counted in ServiceStats by path, status and duration."""

    def __init__(self, app, stats):
        self.app = app
        self.stats = stats

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = [500]

        async def send_noting_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            self.stats.record(scope["path"], status[0], time.perf_counter() - start)


class LimitRequestBody:
    """ASGI middleware: 413 for a request body larger than its path's limit, told by Content-Length or counted
    while it streams in (uploads are spooled to disk by the form parser, so the limit bounds the disk used)."""

    def __init__(self, app, limits):
        self.app = app
        self.limits = limits  # path -> most bytes

    async def __call__(self, scope, receive, send):
        limit = self.limits.get(scope["path"]) if scope["type"] == "http" else None
        if limit is None:
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            response = JSONResponse({"error": _too_large(int(declared), limit)}, status_code=413)
            return await response(scope, receive, send)
        received = 0

        async def receive_counting():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:  # raised inside the form parser: answered by the HTTPException handler
                raise HTTPException(413, _too_large(received, limit))
            return message

        await self.app(scope, receive_counting, send)


def _too_large(size, limit):
    return f"request body of {size} bytes or more, more than the limit of {limit}"


def _check_token(token, authorization):
    """403 when the server has no token (writes disabled), 401 unless the header carries it."""
    if not token:
        raise HTTPException(403, "writes are disabled: the server was started without a token "
                                 f"(serve.py --token or the {TOKEN_ENV} environment variable)")
    scheme, _, given = (authorization or "").partition(" ")
    # compare_digest takes as long whatever the first differing byte: the token cannot be guessed byte by byte
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise HTTPException(401, "a write needs the header 'Authorization: Bearer TOKEN' with the server's token",
                            headers={"WWW-Authenticate": "Bearer"})


def _require_multipart(request: Request):
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise HTTPException(415, f"expected a multipart/form-data upload, got {content_type or 'no content type'!r}")


def _read_upload(upload, max_file_bytes, max_image_pixels, keep_as=None):
    """The uploaded image as an HxWx3 uint8 RGB array (reader.decode.load_rgb's rules).

    The bytes go to a temporary file (or to `keep_as`, which the caller removes on failure) for load_rgb.
    """
    name = upload.filename or "upload"
    content_type = (upload.content_type or "application/octet-stream").split(";")[0].strip().lower()
    if not _ACCEPTED_TYPES.match(content_type):
        raise HTTPException(415, f"{name}: expected an image, got content type {content_type!r}")
    if upload.size is not None and upload.size > max_file_bytes:
        raise HTTPException(413, f"{name}: {upload.size} bytes, more than the limit of {max_file_bytes}")
    upload.file.seek(0)
    if keep_as is not None:
        with open(keep_as, "xb") as out:
            shutil.copyfileobj(upload.file, out)
        return _decode(keep_as, name, max_image_pixels)
    with tempfile.NamedTemporaryFile(prefix="query-", suffix=_suffix(name)) as out:
        shutil.copyfileobj(upload.file, out)
        out.flush()
        return _decode(out.name, name, max_image_pixels)


def _decode(path, name, max_image_pixels):
    try:
        return load_rgb(path, max_image_pixels)
    except BadImageError as err:
        raise HTTPException(400, f"{name}: not a readable image ({err.reason})")


def _suffix(filename):
    suffix = os.path.splitext(filename or "")[1]
    return suffix.lower() if _SUFFIX.match(suffix) else ""


def _upload_path(uploads_dir, filename):
    """A new file name in the uploads folder, keeping the upload's extension."""
    os.makedirs(uploads_dir, exist_ok=True)
    return os.path.join(uploads_dir, uuid.uuid4().hex + _suffix(filename))


def _remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _parse_label(text):
    """An integer label as in list files ("12"), else the text itself (a class name)."""
    text = text.strip()
    if not text:
        raise HTTPException(400, "label is empty")
    try:
        return int(text)
    except ValueError:
        return text


def _known_item(gallery, item_id):
    record = gallery.item(item_id)
    if record is None:
        raise HTTPException(404, f"no item {item_id}")
    return record


def _search_result(matches, top_k, threshold, sigma2):
    return {"matches": [_match_json(match) for match in matches], "no_match": not matches, "top_k": top_k,
            "threshold": threshold, "sigma2": sigma2}


def _expansion(text):
    """The Expansion of a `query_expansion` field "K,ALPHA" (None when not given); 400 when malformed."""
    if text is None or not text.strip():
        return None
    from evaluation.postprocess import Expansion

    try:
        k, alpha = text.split(",")
        return Expansion(int(k), float(alpha))
    except ValueError:
        raise HTTPException(400, f"query_expansion: expected K,ALPHA with K >= 1 and ALPHA >= 0, got {text!r}") \
            from None


def _re_ranking(text):
    """The ReRanking of a `re_ranking` field (None when absent or false); 400 when malformed or over MAX_TOP_K."""
    from retrieval.gallery import ReRanking

    try:
        re_ranking = None if text is None else ReRanking.parse(text)
    except UserError as err:
        raise HTTPException(400, f"re_ranking: {err}") from None
    if re_ranking and re_ranking.shortlist > MAX_TOP_K:
        raise HTTPException(400, f"re_ranking: a shortlist of at most {MAX_TOP_K} candidates, "
                                 f"not {re_ranking.shortlist}")
    return re_ranking


def _match_json(match):
    record = _jsonable(match._asdict())
    record["image_url"] = f"/items/{record['id']}/image"
    return record


def _jsonable(value):
    """numpy scalars and arrays inside dicts and lists as plain Python values."""
    if isinstance(value, dict):
        return {key: _jsonable(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _add_error_handlers(app):
    """Every error as JSON {"error": "..."}; validation errors name the field."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, err):
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, err):
        problems = [f"{'.'.join(str(part) for part in e['loc'][1:]) or e['loc'][0]}: {e['msg']}"
                    for e in err.errors()]
        return JSONResponse({"error": "; ".join(problems)}, status_code=400)

    @app.exception_handler(UserError)
    async def gallery_refusal(request, err):  # e.g. an image the model embeds to NaN
        return JSONResponse({"error": str(err)}, status_code=400)

    @app.exception_handler(Exception)
    async def internal_error(request, err):
        return JSONResponse({"error": f"internal error: {type(err).__name__}: {err}"}, status_code=500)
