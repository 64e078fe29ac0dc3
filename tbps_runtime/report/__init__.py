"""Reports people look at, made with the public API only: ``draw`` (the PNG grid and the HTML page of
ranked crops, with attention maps from :meth:`~tbps_runtime.search.PersonSearch.explain`)."""
