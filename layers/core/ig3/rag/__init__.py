"""Retrieval-augmented generation: collections of embedded chunks, owned per wallet.

Layout (ports and adapters):
- ``chunking``: documents -> overlapping word windows (pure).
- ``embedders``: the ``Embedder`` port; the network's task path (an edge device's embedding
  model, or the cloud fallback) and an in-process sentence-transformers model (local cloud, tests).
- ``stores``: the ``VectorStore`` port; Qdrant (server in production, embedded local mode
  locally) and Faiss (a flat index persisted to S3, loaded by the function). One contract.
- ``registry``: collection records (owner, name, model, dimension, distance, store) in DynamoDB.
- ``service``: the collections service (ownership, ingestion, query, metering).
- ``jobs``: asynchronous ingestion of large uploads (S3 upload, SQS job, checkpointed worker).
- ``context``: retrieved chunks -> a cited context message + the sources list for chat.

Heavy imports (numpy, faiss, qdrant_client, torch) are lazy: only the adapter that needs them.
"""
