"""A gallery: the embeddings of a set of images in a searchable index, with their paths and labels.

An index folder (written by `python index.py build`) holds everything search needs:

    gallery.json          settings (backend, index type, dimension, data folder, model fingerprint)
                          and the number of the current version
    model/                the exported embedding model (engine.embedder's format), with its ONNX copy
                          (inference.onnx, engine.onnx_export.keep_beside_export) that onnxruntime loads
    versions/<number>/    one complete version: items.jsonl (id, path, label, metadata, and sigma2 when the
                          model predicts uncertainty: eval.py's sigma^2 of the image) and the
                          backend's files (faiss: index.faiss, tombstones.npy)
    uploads/              images added through the HTTP service

Every change (add, remove) writes a new version folder beside the current one, then replaces
gallery.json in one rename: a crash at any point leaves the previous version whole, and the next
write cleans up what the crash left. No pickle anywhere: faiss's own format, JSON and npy.

Thread safety: searches read one immutable snapshot (index + item table); writers are serialised by
a lock (and a file lock against other processes) and swap in a new snapshot when it is on disk.
"""
import json
import os
import shutil
import threading
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from retrieval import backends
from utility.errors import UserError
from utility.files import fsync_folder, write_text
from utility.locks import FolderLock

SETTINGS_FILE = "gallery.json"
MODEL_DIR = "model"
VERSIONS_DIR = "versions"
UPLOADS_DIR = "uploads"
ITEMS_FILE = "items.jsonl"
FORMAT = "dml-gallery"
FORMAT_VERSION = 1
WRITING_PREFIX = ".writing-"
# k-reciprocal re-ranking (evaluation/reranking.py, k1 = 20, k2 = 6, lambda = 0.3) of a shortlist per query:
# a query's k1 nearest candidates must be a choice (at least k1 + 1 of them), and the candidates' own
# k1 nearest should lie in the pool too, hence 5 x k1 by default.
DEFAULT_SHORTLIST = 100
MIN_SHORTLIST = 21
# A shortlist's matrices are small (101 x 512 by default): BLAS and OpenMP run them on one thread. On the
# shared 2-core machine (load 5) one query's re-ranking took 92 ms on the default 2 threads, 14 ms on one.
# OpenBLAS's thread count is process-wide: threadpoolctl lets one Python thread at a time change it (the
# first to try, while it lives), so re-rankings in other threads run with whatever it is, and work in other
# threads may see the limit meanwhile; either changes the speed, never the results.
RERANK_THREADS = 1


class Match(NamedTuple):
    """One search result (or an item's record, with rank and similarity None)."""

    rank: Any         # 1 = best
    id: int
    similarity: Any   # inner product of normalised embeddings (cosine)
    path: str         # relative to the data folder for its images, else absolute
    label: Any
    metadata: Any
    sigma2: Any = None  # the image's predicted sigma^2 (a model trained with --uncertainty True), else None


@dataclass(frozen=True)
class ReRanking:
    """k-reciprocal re-ranking of each query's shortlist: its `shortlist` most similar items (at least top_k).

    The re-ranked distances are eval.py's --re_ranking (evaluation.postprocess) over the pool {the query,
    its shortlist}, one query at a time: a result never depends on the other queries searched with it.
    """
    shortlist: int = DEFAULT_SHORTLIST

    def __post_init__(self):
        if self.shortlist < MIN_SHORTLIST:
            raise UserError(f"the re-ranking shortlist must hold at least {MIN_SHORTLIST} candidates (k1 = 20 "
                            f"neighbours and the query), not {self.shortlist}")

    @classmethod
    def parse(cls, text):
        """What a flag or form field asks for: true (the default shortlist), false (None) or a shortlist size."""
        word = str(text).strip().lower()
        if word in ("", "false", "no", "off"):
            return None
        if word in ("true", "yes", "on"):
            return cls()
        try:
            return cls(int(word))
        except ValueError:
            raise UserError(f"re-ranking is true, false or a shortlist size (an integer >= {MIN_SHORTLIST}), "
                            f"not {text!r}") from None


class _Item(NamedTuple):
    path: str        # relative to the data folder, relative to the index folder (in_index), or absolute
    label: Any
    metadata: Any
    in_index: bool   # stored inside the index folder (an upload)
    sigma2: Any = None


class _State(NamedTuple):
    """One version of the gallery: what a search reads, never changed once made."""

    version: int
    next_id: int
    index: Any       # a backend index
    items: dict      # id -> _Item


class Gallery:
    """An index folder opened for search and changes (see the module docstring)."""

    def __init__(self, index_dir, settings, state, engine=None):
        self.index_dir = os.path.abspath(index_dir)
        self.engine = engine  # what runs the model for queries (engine.embedder.ENGINES)
        self.settings = settings
        self._state = state
        self._write_lock = threading.Lock()
        self._embedder = None
        self._embedder_lock = threading.Lock()
        self._in_flight = 0  # ids a writer has put into a shared backend but not yet into the table

    # ---- opening and creating -------------------------------------------------------------
    @classmethod
    def open(cls, index_dir, engine=None):
        settings = _read_settings(index_dir)
        return cls(index_dir, settings, _load_state(index_dir, settings), engine)

    @classmethod
    def create(cls, index_dir, *, dim, fingerprint, model_info, data_dir, backend="faiss", index_type=None,
               search_params=None, milvus_uri=None, expected_items=0):
        """Write an empty gallery into index_dir (a new folder; index.py builds in a temporary one)."""
        settings = {"format": FORMAT, "format_version": FORMAT_VERSION, "backend": backend, "dim": int(dim),
                    "metric": "inner_product", "data_dir": os.path.abspath(data_dir), "fingerprint": fingerprint,
                    "model": model_info, "version": 0, "next_id": 0}
        settings.update(backends.settings_for(backend, index_dir, int(dim), index_type, search_params, milvus_uri,
                                              expected_items))
        os.makedirs(os.path.join(index_dir, VERSIONS_DIR), exist_ok=True)
        os.makedirs(os.path.join(index_dir, UPLOADS_DIR), exist_ok=True)
        index = backends.create(settings, index_dir)
        gallery = cls(index_dir, settings, _State(0, 0, index, {}))
        with gallery._write_lock, gallery._file_lock():
            gallery._commit(gallery._state)
        return gallery

    def close(self):
        """Release the backend's connection (Milvus); the gallery is unusable afterwards."""
        self._state.index.close()

    # ---- reading --------------------------------------------------------------------------
    @property
    def data_dir(self):
        return self.settings["data_dir"]

    @property
    def uploads_dir(self):
        return os.path.join(self.index_dir, UPLOADS_DIR)

    @property
    def model_dir(self):
        return os.path.join(self.index_dir, MODEL_DIR)

    @property
    def dim(self):
        return self.settings["dim"]

    @property
    def fingerprint(self):
        return self.settings["fingerprint"]

    @property
    def embedder(self):
        """The QueryEmbedder of the index's own model, loaded on first use."""
        with self._embedder_lock:
            if self._embedder is None:
                from retrieval.query import QueryEmbedder

                self._embedder = QueryEmbedder(self.model_dir, engine=self.engine)
            return self._embedder

    def __len__(self):
        return len(self._state.items)

    def ids(self):
        """The item ids, ascending."""
        return sorted(self._state.items)

    def item_paths(self):
        """{item id: absolute path of its image} (wherever it lies)."""
        return {item_id: os.path.abspath(self._absolute(item)) for item_id, item in self._state.items.items()}

    def search(self, features, top_k, threshold=None, query_expansion=None, re_ranking=None):
        """Per query row, its best top_k items as Match lists (best first); below threshold dropped.

        query_expansion: an evaluation.postprocess.Expansion (k, alpha): each query is first replaced by
        itself and its k best items' vectors weighted by similarity ** alpha (alpha-QE), normalised.
        re_ranking: a ReRanking: the query's shortlist of most similar items, ordered by k-reciprocal
        re-ranked distance. The threshold then drops the matches whose similarity (always the cosine) is
        below it, so a query has no match exactly when it has none without re-ranking.
        """
        features = self._checked(features, "query")
        state = self._state
        top_k = int(top_k)
        if top_k < 1:
            raise UserError(f"top_k must be at least 1, not {top_k}")
        if query_expansion is not None and re_ranking is not None:
            from evaluation.postprocess import expansions_clash
            raise UserError(expansions_clash())
        if query_expansion is not None:
            features = self._expanded(state, features, query_expansion)
        depth = max(top_k, re_ranking.shortlist) if re_ranking is not None else top_k
        sims, ids = state.index.search(features, depth + self._in_flight)
        # -1 (fewer neighbours than asked) and ids a writer has not committed are no candidates
        candidates = [[(similarity, item_id) for similarity, item_id in zip(row_sims.tolist(), row_ids.tolist())
                       if item_id in state.items][:depth] for row_sims, row_ids in zip(sims, ids)]
        if re_ranking is not None:
            candidates = self._reranked(state, features, candidates)
        results = []
        for row in candidates:
            kept = [(similarity, item_id) for similarity, item_id in row
                    if threshold is None or similarity >= threshold][:top_k]
            results.append([self._match(rank, item_id, similarity, state.items[item_id])
                            for rank, (similarity, item_id) in enumerate(kept, 1)])
        return results

    def item(self, item_id):
        item = self._state.items.get(_as_id(item_id))
        return None if item is None else self._match(None, _as_id(item_id), None, item)

    def image_path(self, item_id):
        """The item's image as an absolute path inside the data or uploads folder; None if unknown or outside."""
        item = self._state.items.get(_as_id(item_id))
        if item is None:
            return None
        path = os.path.realpath(self._absolute(item))
        for root in (self.data_dir, self.uploads_dir):
            root = os.path.realpath(root)
            if os.path.commonpath([root, path]) == root and path != root:
                return path
        return None

    def stats(self):
        state = self._state
        return {"items": len(state.items), "dim": self.dim, "backend": self.settings["backend"],
                "index_type": self.settings.get("index_type", self.settings["backend"]),
                "search_params": self.settings.get("search_params", ""), "fingerprint": self.fingerprint,
                "model": (self.settings.get("model") or {}).get("model"), "version": state.version,
                "tombstones": len(getattr(state.index, "tombstones", ())), "data_dir": self.data_dir}

    # ---- changing -------------------------------------------------------------------------
    def add(self, features, paths, labels, metadata=None, sigma2=None):
        """Add items (features [n, D], one path and label each, sigma^2 each when the model predicts it);
        returns their new ids, persisted."""
        features = self._checked(features, "gallery")
        paths, labels = list(paths), list(labels)
        metadata = [None] * len(paths) if metadata is None else list(metadata)
        sigma2 = [None] * len(paths) if sigma2 is None else [float(value) for value in sigma2]
        if not len(features) == len(paths) == len(labels) == len(metadata) == len(sigma2):
            raise UserError(f"add needs one path, label and metadata (and sigma^2 when given) per embedding: "
                            f"{len(features)} embeddings, {len(paths)} paths, {len(labels)} labels, "
                            f"{len(metadata)} metadata, {len(sigma2)} sigma^2")
        new_items = [self._item(path, label, meta, value)
                     for path, label, meta, value in zip(paths, labels, metadata, sigma2)]
        with self._write_lock, self._file_lock():
            state = self._latest_state()
            ids = np.arange(state.next_id, state.next_id + len(new_items), dtype=np.int64)
            self._in_flight = len(ids)
            try:
                index = state.index.with_added(features, ids) if len(ids) else state.index
                items = dict(state.items)
                items.update(zip(ids.tolist(), new_items))
                self._commit(_State(state.version + 1, state.next_id + len(ids), index, items))
            finally:
                self._in_flight = 0
        return ids.tolist()

    def remove(self, ids):
        """Remove the items with these ids (unknown ones ignored); returns how many were removed, persisted."""
        with self._write_lock, self._file_lock():
            state = self._latest_state()
            gone = {_as_id(i) for i in ids} & state.items.keys()
            if not gone:
                return 0
            items = {i: item for i, item in state.items.items() if i not in gone}
            gone = sorted(gone)
            self._in_flight = len(gone)
            try:
                self._commit(_State(state.version + 1, state.next_id, state.index.without(gone), items))
                self._state.index.purge(gone)
            finally:
                self._in_flight = 0
        return len(gone)

    def check_model(self, fingerprint, dim, what):
        """UserError unless embeddings of (fingerprint, dim) from `what` belong in this gallery."""
        if dim != self.dim:
            raise UserError(f"{what} holds {dim}-d embeddings, the gallery in {self.index_dir} holds {self.dim}-d "
                            f"ones (model fingerprint {self.fingerprint}): embed with the gallery's model")
        if fingerprint != self.fingerprint:
            raise UserError(f"{what} was embedded by model fingerprint {fingerprint}, the gallery in "
                            f"{self.index_dir} by {self.fingerprint} (another model or preprocessing)")

    # ---- internals ------------------------------------------------------------------------
    def _checked(self, features, what):
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise UserError(f"{what} embeddings have shape {features.shape}, the gallery holds {self.dim}-d ones "
                            f"(model fingerprint {self.fingerprint})")
        if not np.isfinite(features).all():
            raise UserError(f"{what} embeddings are not finite (NaN or inf)")
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        return features / np.maximum(norms, 1e-12)

    def _item(self, path, label, metadata, sigma2=None):
        label = label.item() if isinstance(label, np.generic) else label
        absolute = os.path.abspath(path)
        for root, in_index in ((self.data_dir, False), (self.index_dir, True)):
            if os.path.commonpath([root, absolute]) == root and absolute != root:
                return _Item(os.path.relpath(absolute, root), label, metadata, in_index, sigma2)
        return _Item(absolute, label, metadata, False, sigma2)

    def _expanded(self, state, features, expansion):
        """alpha-QE of unit queries with the vectors of their k best committed items (the backend's own)."""
        from evaluation.postprocess import expand_queries

        _, ids = state.index.search(features, expansion.k + self._in_flight)
        expanded = np.empty_like(features)
        for row, (query, row_ids) in enumerate(zip(features, ids)):
            known = [int(i) for i in row_ids if int(i) in state.items][:expansion.k]
            neighbours = state.index.vectors(known) if known else np.zeros((0, self.dim), np.float32)
            expanded[row] = expand_queries(query[None], neighbours, expansion)[0]
        return expanded

    def _reranked(self, state, features, candidates):
        """Each query's candidates [(similarity, id)] by k-reciprocal re-ranked distance over {query, candidates}
        (evaluation.postprocess, eval.py's --re_ranking), ties in their order of similarity."""
        from threadpoolctl import threadpool_limits

        from evaluation.postprocess import PostProcessing, ranked_blocks

        candidate_ids = sorted({item_id for row in candidates for _, item_id in row})
        position = {item_id: i for i, item_id in enumerate(candidate_ids)}
        stored = state.index.vectors(candidate_ids) if candidate_ids else None
        reranked = []
        with threadpool_limits(limits=RERANK_THREADS):
            for query, row in zip(features, candidates):
                if not row:
                    reranked.append(row)
                    continue
                pool = stored[[position[item_id] for _, item_id in row]]
                _, order, _ = next(ranked_blocks(query[None], pool, wanted=np.array([len(row)]), leave_one_out=False,
                                                 feat_norm=True, post_processing=PostProcessing(re_ranking=True)))
                reranked.append([row[i] for i in order[0].tolist()])
        return reranked

    def _absolute(self, item):
        return os.path.join(self.index_dir if item.in_index else self.data_dir, item.path)

    def _match(self, rank, item_id, similarity, item):
        path = self._absolute(item) if item.in_index else item.path
        return Match(rank, item_id, similarity, path, item.label, item.metadata, item.sigma2)

    def _file_lock(self):
        """Serialise writers across processes (the service and `index.py add` on one folder)."""
        return FolderLock(self.index_dir, "index writer", wait=True)

    def _latest_state(self):
        """The snapshot to change: ours, or the one on disk when another process has changed the gallery."""
        on_disk = _read_settings(self.index_dir)
        if on_disk["version"] != self._state.version:
            self.settings = on_disk
            self._state = _load_state(self.index_dir, on_disk)
        return self._state

    def _commit(self, state):
        """Write state as a new version, switch gallery.json to it, then make it the searched snapshot."""
        versions = os.path.join(self.index_dir, VERSIONS_DIR)
        _remove_leftovers(versions, keep=self._state.version)
        writing = os.path.join(versions, f"{WRITING_PREFIX}{state.version}")
        os.makedirs(writing)
        state.index.save(writing)
        with open(os.path.join(writing, ITEMS_FILE), "w") as f:
            for item_id, item in sorted(state.items.items()):
                record = {"id": item_id, "path": item.path, "label": item.label, "metadata": item.metadata}
                if item.in_index:
                    record["in_index"] = True
                if item.sigma2 is not None:
                    record["sigma2"] = item.sigma2
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        _sync_folder_files(writing)
        os.replace(writing, os.path.join(versions, _version_name(state.version)))
        fsync_folder(versions)
        settings = dict(self.settings, version=state.version, next_id=state.next_id, items=len(state.items))
        _write_json_atomically(os.path.join(self.index_dir, SETTINGS_FILE), settings)
        self.settings = settings
        self._state = state
        _remove_leftovers(versions, keep=state.version)


def _as_id(item_id):
    try:
        return int(item_id)
    except (TypeError, ValueError):
        raise UserError(f"item ids are integers, not {item_id!r}") from None


def _version_name(version):
    return f"{version:08d}"


def _read_settings(index_dir):
    path = os.path.join(index_dir, SETTINGS_FILE)
    if not os.path.isdir(index_dir):
        raise UserError(f"index folder not found: {index_dir} (python index.py build writes one)")
    try:
        with open(path) as f:
            settings = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{index_dir} is not an index folder: {SETTINGS_FILE} missing") from None
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    if not isinstance(settings, dict) or settings.get("format") != FORMAT:
        raise UserError(f"{path} is not a gallery's settings file")
    if settings.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{index_dir} was written in gallery format {settings.get('format_version')}, this "
                        f"version reads format {FORMAT_VERSION}: rebuild it with python index.py build")
    return settings


def _load_state(index_dir, settings):
    folder = os.path.join(index_dir, VERSIONS_DIR, _version_name(settings["version"]))
    items = {}
    try:
        with open(os.path.join(folder, ITEMS_FILE), encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                items[int(record["id"])] = _Item(record["path"], record["label"], record.get("metadata"),
                                                 bool(record.get("in_index")), record.get("sigma2"))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"the index folder {index_dir} is damaged: cannot read version "
                        f"{settings['version']}'s item table ({err})") from None
    index = backends.load(settings, index_dir, folder)
    return _State(settings["version"], settings["next_id"], index, items)


def _remove_leftovers(versions, keep):
    """Delete every version folder but `keep`, and what interrupted writes left."""
    for name in os.listdir(versions):
        if name != _version_name(keep):
            shutil.rmtree(os.path.join(versions, name), ignore_errors=True)


def _sync_folder_files(folder):
    for name in os.listdir(folder):
        with open(os.path.join(folder, name), "rb") as f:
            os.fsync(f.fileno())
    fsync_folder(folder)


def _write_json_atomically(path, value):
    write_text(path, json.dumps(value, indent=1))
    fsync_folder(os.path.dirname(path))