"""Galleries: embedded crops on disk, and the ways to search them.

``records`` (the plain records of ``g.json``), ``storage`` (one ``g.npy`` +
``g.json``, and resumable indexing into it), ``shards`` (a directory of shard
galleries ranked as one), ``open`` (:func:`~tbps_runtime.gallery.open.load_gallery`:
whatever is at a path; :func:`~tbps_runtime.gallery.open.open_store`: a store),
``faiss_index`` and ``faiss_gallery`` (an optional FAISS index beside a gallery).

Stores (``tbps ingest``) grow by appending: ``rows`` (what a store keeps beside
each embedding, and filters), ``store`` (append-only segments + a SQLite
catalog) and ``milvus_store`` (the same on Milvus).
"""
