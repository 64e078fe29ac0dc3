"""Embedding a list of image files into a resumable partial gallery: in this process
(``local``) or with a Ray Data actor pool (``ray``). Both fill a
:class:`~tbps_runtime.gallery.npy.PartialIndex` in list order, with the same
rules for unreadable images; :meth:`tbps_runtime.search.PersonSearch.index` drives them.
"""
