"""Plain galleries: embedded crops on disk, and the ways to search them.

``records`` (the plain records of ``g.json``), ``npy`` (one ``g.npy`` + ``g.json``, and resumable
indexing into it), ``shards`` (a directory of shard galleries ranked as one), ``open``
(:func:`~tbps_runtime.gallery.open.load_gallery`: whatever is at a path), ``faiss_index`` and
``faiss_gallery`` (an optional FAISS index beside a gallery).

Galleries that grow by appending (``tbps ingest``) are stores: :mod:`tbps_runtime.store`.
"""
