"""The routers of ``tbps serve``, one per resource; :func:`~tbps_runtime.serve.app.create_app` includes
:data:`ROUTERS`. Data routers depend on :func:`~tbps_runtime.serve.deps.require_key`; the service's own
endpoints (health, readiness, metrics) and the operator page are public."""

from __future__ import annotations

from tbps_runtime.serve.routes import context, crops, docs, embed, gallery, health, page, search

ROUTERS = [health.router, search.router, embed.router, crops.router, context.router, gallery.router, page.router,
           docs.router]

__all__ = ["ROUTERS"]
