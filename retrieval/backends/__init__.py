"""Index backends of a gallery: faiss (in the process, the default) and Milvus (milvus-lite or a server).

A backend index answers search(features, k) -> (similarities, ids) and vectors(ids) -> the stored
vectors (query expansion), and changes through
with_added(features, ids) / without(ids) (both return the index to use next), save(folder) into a
new version folder, purge(ids) after a removal is committed, and close().
"""
from utility.errors import UserError

BACKENDS = ("faiss", "milvus")


def settings_for(backend, index_dir, dim, index_type, search_params, milvus_uri, expected_items):
    """The backend's entries of gallery.json for a new gallery."""
    if backend == "faiss":
        from retrieval.backends.faiss_index import default_index_type, default_search_params

        chosen_type, chosen_params = default_index_type(expected_items)
        if index_type:
            chosen_type, chosen_params = index_type, default_search_params(index_type)
        return {"index_type": chosen_type, "search_params": chosen_params if search_params is None else search_params}
    if backend == "milvus":
        from retrieval.backends.milvus_index import milvus_settings

        if index_type or search_params:
            raise UserError("--index_type and --search_params are faiss settings; Milvus indexes with its own")
        return milvus_settings(index_dir, milvus_uri)
    raise UserError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")


def create(settings, index_dir):
    """The empty index of a new gallery."""
    if settings["backend"] == "faiss":
        from retrieval.backends.faiss_index import FaissIndex

        return FaissIndex.create(settings["dim"], settings["index_type"], settings["search_params"])
    from retrieval.backends.milvus_index import MilvusIndex

    return MilvusIndex.create(settings, index_dir)


def load(settings, index_dir, version_folder):
    """The index of a gallery's current version."""
    if settings["backend"] == "faiss":
        from retrieval.backends.faiss_index import FaissIndex

        return FaissIndex.load(version_folder, settings["index_type"], settings["search_params"])
    if settings["backend"] == "milvus":
        from retrieval.backends.milvus_index import MilvusIndex

        return MilvusIndex.connect(settings, index_dir)
    raise UserError(f"{index_dir}: unknown backend {settings['backend']!r} in its settings")
