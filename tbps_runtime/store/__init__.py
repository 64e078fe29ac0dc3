"""Stores: galleries that grow (``tbps ingest``), searched with filters.

``base`` (the :class:`~tbps_runtime.store.base.Store` protocol and the checks its implementations
share), ``rows`` (what a store keeps beside each embedding, and filters), ``local`` (append-only
segments + a SQLite catalog), ``milvus`` (the same on Milvus), ``milvus_expr`` (its addresses and
filter expressions), ``milvus_summary`` (the per-append summaries its ``info()`` reads), ``open``
(:func:`~tbps_runtime.store.open.open_store`: the store at a directory).
"""
