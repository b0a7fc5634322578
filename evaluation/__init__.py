"""Retrieval evaluation without Paddle: metrics on embeddings and the retrieval picture."""
