"""Retrieval: a gallery index of embeddings (gallery.py, backends/), queries embedded by the
gallery's own model (query.py), building and changing an index from images (indexing.py) and
searching it with image files (searching.py); index.py and search.py are their command lines."""
