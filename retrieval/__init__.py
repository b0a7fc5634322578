"""Retrieval: a gallery index of embeddings (gallery.py, backends/), queries embedded by the
gallery's own model (query.py); index.py and search.py are its command lines."""
