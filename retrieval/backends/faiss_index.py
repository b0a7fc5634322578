"""The faiss backend: an inner-product index of L2-normalised embeddings, keyed by item id.

Any faiss `index_factory` string works. Inverted-file indexes (IVF...) carry the item ids
themselves; every other type is wrapped in an IndexIDMap2. Each change returns a new object
(the old one keeps serving searches until the gallery swaps its reference).

Removal: where the index type can remove vectors (Flat, IVF, PQ, ...) they are removed.
HNSW graphs cannot: a removed id becomes a tombstone, left in the graph but dropped from
every result (the search asks for as many more neighbours as there are tombstones); once
tombstones reach REBUILD_FRACTION of the index, the index is rebuilt from the live vectors
(reconstructed from the index itself, so no second copy of the embeddings is kept).
"""
import os
import re
import threading

import faiss
import numpy as np

from engine.device import usable_cores
from utility.errors import UserError

INDEX_FILE = "index.faiss"
TOMBSTONES_FILE = "tombstones.npy"
REBUILD_FRACTION = 0.1
EXACT_UP_TO = 100_000       # galleries up to this size get the exact Flat index
IVF_TRAIN_PER_LIST = 32     # training vectors per inverted list (faiss warns below 39; 32 measured enough)
# Searches run on one OpenMP thread (the setting is per calling thread; concurrent searches, e.g. the
# service's requests, use the other cores). On the shared 2-core machine, two threads per search
# waited on each other: one query on Flat 10k x 512 took 24 ms (p50) against 0.8 ms on one thread,
# 64 queries on Flat 100k 0.5-0.7 s against 0.09-0.14 s. Training and adding use every core this
# process may run on, whatever OMP_NUM_THREADS the scripts set for Paddle.
ALL_THREADS = usable_cores()
# Exact (Flat) distances: a batch of queries goes through BLAS matrix products, a few queries one by
# one. Measured on Flat 100k x 512, one thread: 64 queries 0.09 s with BLAS against 0.66-0.9 s one by
# one; 1 query 30 ms with BLAS against 10-14 ms. faiss's own switch (distance_compute_blas_threshold)
# is process-wide and did not follow the number of queries, so each search sets it: concurrent
# searches may see each other's setting, which changes their speed, never their results.
BLAS_FROM_QUERIES = 8
NEVER = 1 << 30
# Query expansion reads stored vectors by id; an IVF index gets its id -> vector map on first use, which
# changes the index in place: never while a writer clones it.
_DIRECT_MAP_LOCK = threading.Lock()


PROBED_FRACTION = 64        # IVF: search 1/64 of the lists (recall@10 0.99 at 100k and 1M, bench_search.py)
HNSW_EF_SEARCH = 64         # HNSW: faiss's default of 16 loses recall


def default_index_type(num_items):
    """(index_factory string, search parameters) for a gallery of num_items (bench/bench_search.py measured it).

    Exact inner product up to EXACT_UP_TO items; beyond, an inverted file of about 4 sqrt(n) lists
    with 8-bit scalar codes (a quarter of float32's memory: 1M x 512 in about 0.5 GB).
    """
    if num_items <= EXACT_UP_TO:
        return "Flat", ""
    index_type = f"IVF{1 << round(np.log2(4 * np.sqrt(num_items)))},SQ8"
    return index_type, default_search_params(index_type)


def default_search_params(index_type):
    """Search parameters for an index_factory string: nprobe for IVF, efSearch for HNSW, else none."""
    ivf = re.search(r"IVF(\d+)", index_type)
    if ivf:
        return f"nprobe={max(1, int(ivf.group(1)) // PROBED_FRACTION)}"
    return f"efSearch={HNSW_EF_SEARCH}" if "HNSW" in index_type else ""


class FaissIndex:
    """An immutable-by-convention faiss index of item ids; with_added/without return new objects."""

    backend = "faiss"

    def __init__(self, index, index_type, search_params, tombstones=()):
        self.index = index
        self.index_type = index_type
        self.search_params = search_params
        self.tombstones = frozenset(int(i) for i in tombstones)
        self.removes_vectors = _can_remove(index)

    @classmethod
    def create(cls, dim, index_type, search_params=""):
        try:
            inner = faiss.index_factory(dim, index_type, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as err:
            raise UserError(f"--index_type {index_type!r} is not a faiss index_factory string: "
                            f"{_faiss_message(err)}") from None
        index = inner if _is_ivf(inner) else faiss.IndexIDMap2(inner)
        _apply_search_params(index, index_type, search_params)
        return cls(index, index_type, search_params)

    @classmethod
    def load(cls, folder, index_type, search_params):
        try:
            index = faiss.read_index(os.path.join(folder, INDEX_FILE))
        except RuntimeError as err:
            raise UserError(f"cannot read the faiss index in {folder}: {_faiss_message(err)}") from None
        tombstones_path = os.path.join(folder, TOMBSTONES_FILE)
        tombstones = np.load(tombstones_path) if os.path.exists(tombstones_path) else ()
        _apply_search_params(index, index_type, search_params)
        return cls(index, index_type, search_params, tombstones)

    def save(self, folder):
        """Write the index (and its tombstones) into folder (a new version folder; the caller syncs it)."""
        faiss.write_index(self.index, os.path.join(folder, INDEX_FILE))
        if self.tombstones:
            np.save(os.path.join(folder, TOMBSTONES_FILE), np.array(sorted(self.tombstones), dtype=np.int64))

    @property
    def count(self):
        """Vectors in the index, tombstoned ones included."""
        return self.index.ntotal

    def with_added(self, features, ids):
        """A new index with features [n, D] added under ids (trained on them first if the type needs it)."""
        faiss.omp_set_num_threads(ALL_THREADS)
        with _DIRECT_MAP_LOCK:
            index = faiss.clone_index(self.index)
        if not index.is_trained:
            _train(index, features, self.index_type)
        index.add_with_ids(np.ascontiguousarray(features, dtype=np.float32), np.asarray(ids, dtype=np.int64))
        _apply_search_params(index, self.index_type, self.search_params)
        return FaissIndex(index, self.index_type, self.search_params, self.tombstones)

    def without(self, ids):
        """A new index without ids: removed, or tombstoned where the type cannot remove (then maybe rebuilt)."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.removes_vectors:
            with _DIRECT_MAP_LOCK:
                index = faiss.clone_index(self.index)
            index.remove_ids(ids)
            return FaissIndex(index, self.index_type, self.search_params)
        tombstones = self.tombstones | set(ids.tolist())
        if len(tombstones) >= REBUILD_FRACTION * self.count:
            return self._rebuilt_without(tombstones)
        return FaissIndex(self.index, self.index_type, self.search_params, tombstones)

    def purge(self, ids):
        """Nothing to do: without() already left the ids out."""

    def close(self):
        """Nothing to release."""

    def search(self, features, k):
        """(similarities [n, k'], ids [n, k']) best first; missing neighbours have id -1. Tombstones never appear."""
        wanted = min(k + len(self.tombstones), self.count)
        if wanted == 0:
            n = len(features)
            return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
        faiss.omp_set_num_threads(1)
        faiss.cvar.distance_compute_blas_threshold = 1 if len(features) >= BLAS_FROM_QUERIES else NEVER
        sims, ids = self.index.search(np.ascontiguousarray(features, dtype=np.float32), wanted)
        if self.tombstones:
            dead = np.isin(ids, np.fromiter(self.tombstones, np.int64, len(self.tombstones)))
            ids = np.where(dead, -1, ids)
            order = np.argsort(dead, axis=1, kind="stable")  # live neighbours first, their order kept
            sims, ids = np.take_along_axis(sims, order, 1), np.take_along_axis(ids, order, 1)
        return sims[:, :k], ids[:, :k]

    def vectors(self, ids):
        """The stored vectors of ids [n, D] (approximate for compressed types such as SQ8 or PQ; query expansion)."""
        ivf = faiss.extract_index_ivf(self.index) if _is_ivf(self.index) else None
        try:
            if ivf is not None and ivf.direct_map.type == faiss.DirectMap.NoMap:
                with _DIRECT_MAP_LOCK:  # id -> list position, kept through later changes
                    if ivf.direct_map.type == faiss.DirectMap.NoMap:
                        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
            return np.stack([self.index.reconstruct(int(i)) for i in ids]).astype(np.float32)
        except RuntimeError as err:
            raise UserError(f"index type {self.index_type} cannot return its vectors, which query expansion and "
                            f"re-ranking need: {_faiss_message(err)}") from None

    def _rebuilt_without(self, dead):
        id_map = faiss.vector_to_array(self.index.id_map)
        live = ~np.isin(id_map, np.fromiter(dead, np.int64, len(dead)))
        vectors = self.index.index.reconstruct_n(0, self.count)[live]
        fresh = FaissIndex.create(self.index.d, self.index_type, self.search_params)
        return fresh.with_added(vectors, id_map[live]) if live.any() else fresh


def _is_ivf(index):
    try:
        faiss.extract_index_ivf(index)
        return True
    except RuntimeError:
        return False


def _can_remove(index):
    try:
        index.remove_ids(np.zeros(0, dtype=np.int64))
        return True
    except RuntimeError:
        return False


def _train(index, features, index_type):
    ivf = faiss.extract_index_ivf(index) if _is_ivf(index) else None
    sample = features
    if ivf is not None:
        if len(features) < ivf.nlist:
            raise UserError(f"index type {index_type} has {ivf.nlist} lists and needs at least that many "
                            f"items to train on; the gallery has {len(features)} (use Flat)")
        limit = IVF_TRAIN_PER_LIST * ivf.nlist
        if len(features) > limit:
            rows = np.random.default_rng(0).choice(len(features), limit, replace=False)
            sample = features[np.sort(rows)]
    try:
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    except RuntimeError as err:
        raise UserError(f"cannot train index type {index_type} on {len(sample)} items: "
                        f"{_faiss_message(err)}") from None


def _apply_search_params(index, index_type, search_params):
    if not search_params:
        return
    try:
        faiss.ParameterSpace().set_index_parameters(index, search_params)
    except RuntimeError as err:
        raise UserError(f"search parameters {search_params!r} do not apply to index type {index_type}: "
                        f"{_faiss_message(err)}") from None


def _faiss_message(err):
    """The message of a faiss RuntimeError without the C++ function and file it names."""
    return re.sub(r"^Error in .*? at \S+:\d+: ", "", str(err).strip()).splitlines()[0]
