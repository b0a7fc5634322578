"""The Milvus backend: the gallery's vectors in a Milvus collection, for galleries that outgrow one machine.

    python index.py build ... --backend milvus                               # milvus-lite: INDEX_DIR/milvus.db
    python index.py build ... --backend milvus --milvus_uri ./gallery.db     # milvus-lite, a file of yours
    python index.py build ... --backend milvus --milvus_uri http://host:19530  # a Milvus server or cluster

Milvus keeps the vectors (keyed by item id, inner-product metric); the index folder keeps the item
table and settings, and the table is the truth: vectors are inserted before the table that names
them is committed and deleted after the table that drops them is, so a crash in between leaves
only vectors no table names, which searches skip (and the next add deletes those above the last
committed id). milvus-lite searches exactly (FLAT); a server builds its own index (AUTOINDEX).
A milvus-lite file is locked by the one process that serves it (the service, or index.py): to
change a served gallery from elsewhere, use the service's endpoints, or a Milvus server.
"""
import os
import uuid

import numpy as np

from utility.errors import UserError

LITE_FILE = "milvus.db"
INSERT_ROWS = 10_000   # rows per insert request
MAX_TOP_K = 16_384     # Milvus's limit on neighbours per search


def milvus_settings(index_dir, milvus_uri):
    """gallery.json entries of a new Milvus gallery: where the vectors live, in which collection."""
    if milvus_uri and _is_server(milvus_uri):
        uri, index_type = milvus_uri, "AUTOINDEX"
    elif milvus_uri:
        uri, index_type = os.path.abspath(milvus_uri), "FLAT"
    else:
        uri, index_type = LITE_FILE, "FLAT"  # inside the index folder, wherever it moves
    return {"milvus_uri": uri, "milvus_collection": f"gallery_{uuid.uuid4().hex[:12]}", "index_type": index_type}


def _is_server(uri):
    return uri.startswith(("http://", "https://", "tcp://", "grpc://"))


def _lite_path(settings, index_dir):
    """The milvus-lite file's absolute path (a relative one lies in the index folder); None for a server."""
    uri = settings["milvus_uri"]
    return None if _is_server(uri) else os.path.abspath(os.path.join(index_dir, uri))


def _client(settings, index_dir):
    try:
        from pymilvus import MilvusClient
    except ImportError as err:
        raise UserError(f"the Milvus backend needs pymilvus (and milvus-lite for a local file): {err}") from None
    uri = _lite_path(settings, index_dir) or settings["milvus_uri"]
    try:
        return MilvusClient(uri=uri)
    except Exception as err:  # noqa: BLE001 - pymilvus raises its own and gRPC's error types
        raise UserError(f"cannot connect to Milvus at {uri}: {str(err).strip().splitlines()[0]}") from None


class MilvusIndex:
    """A Milvus collection of (id, embedding) rows; changes happen in place (see the module docstring)."""

    backend = "milvus"
    tombstones = frozenset()

    def __init__(self, client, collection, lite_path=None):
        self.client = client
        self.collection = collection
        self.lite_path = lite_path  # the milvus-lite file this process serves, None for a server

    @classmethod
    def create(cls, settings, index_dir):
        from pymilvus import DataType

        client = _client(settings, index_dir)
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=settings["dim"])
        index_params = client.prepare_index_params()
        index_params.add_index(field_name="embedding", index_type=settings["index_type"], metric_type="IP")
        client.create_collection(settings["milvus_collection"], schema=schema, index_params=index_params,
                                 consistency_level="Strong")
        return cls(client, settings["milvus_collection"], _lite_path(settings, index_dir))

    @classmethod
    def connect(cls, settings, index_dir):
        client = _client(settings, index_dir)
        if not client.has_collection(settings["milvus_collection"]):
            raise UserError(f"the Milvus collection {settings['milvus_collection']} of {index_dir} is missing at "
                            f"{settings['milvus_uri']}")
        client.load_collection(settings["milvus_collection"])
        return cls(client, settings["milvus_collection"], _lite_path(settings, index_dir))

    @property
    def count(self):
        return int(self.client.get_collection_stats(self.collection)["row_count"])

    def with_added(self, features, ids):
        ids = np.asarray(ids, dtype=np.int64)
        self.client.delete(self.collection, filter=f"id >= {int(ids.min())}")  # left by an interrupted add
        for start in range(0, len(ids), INSERT_ROWS):
            rows = [{"id": int(i), "embedding": vector}
                    for i, vector in zip(ids[start:start + INSERT_ROWS], features[start:start + INSERT_ROWS].tolist())]
            self.client.insert(self.collection, rows)
        return self

    def without(self, ids):
        return self  # the vectors go in purge(), once no committed table names them

    def purge(self, ids):
        self.client.delete(self.collection, ids=[int(i) for i in ids])

    def save(self, folder):
        """Nothing to write: Milvus keeps the vectors."""

    def close(self):
        """Close the connection and stop this process's milvus-lite server of the file (it locks the file)."""
        self.client.close()
        if self.lite_path:
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self.lite_path)

    def vectors(self, ids):
        """The stored vectors of ids [n, D] (query expansion)."""
        rows = {row["id"]: row["embedding"] for row in
                self.client.get(self.collection, ids=[int(i) for i in ids], output_fields=["embedding"])}
        return np.array([rows[int(i)] for i in ids], np.float32)

    def search(self, features, k):
        """(similarities [n, k], ids [n, k]) best first, id -1 where Milvus had fewer neighbours."""
        k = min(k, MAX_TOP_K)
        sims = np.full((len(features), k), -np.inf, np.float32)
        ids = np.full((len(features), k), -1, np.int64)
        hits = self.client.search(self.collection, data=np.asarray(features, np.float32).tolist(), limit=k,
                                  anns_field="embedding", search_params={"metric_type": "IP"}, output_fields=["id"])
        for row, found in enumerate(hits):
            for column, hit in enumerate(found):
                sims[row, column], ids[row, column] = hit["distance"], hit["id"]
        return sims, ids
