"""The routers of ``tbps serve``, one per resource; :func:`~tbps_runtime.serve.app.create_app` includes
:data:`ROUTERS`. Data routers depend on :func:`~tbps_runtime.serve.deps.require_key`; the service's own
endpoints (health, readiness, metrics) and the operator page are public."""

from __future__ import annotations

from tbps_runtime.serve.routes import crops, embed, gallery, health, page, search

ROUTERS = [health.router, search.router, embed.router, crops.router, gallery.router, page.router]

__all__ = ["ROUTERS"]
