"""Helpers of the service tests: a warmed-up test client and the one error shape."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from tbps_runtime.serve import ServeSettings
from tbps_runtime.serve.app import create_app


def settings_for(gallery, **options) -> ServeSettings:
    return ServeSettings(gallery=str(gallery), threads=1, **options)


def serving(gallery, *, page_dir=None, service=None, **options) -> TestClient:
    """A test client of the app for ``gallery``, warmed up (use as a context manager)."""
    return ReadyClient(create_app(settings_for(gallery, **options), service, page_dir=page_dir))


class ReadyClient(TestClient):
    """A test client whose ``with`` block starts once ``/readyz`` answers 200 (10 s at most)."""

    def __enter__(self):
        client = super().__enter__()
        deadline = time.monotonic() + 10
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").json()
            time.sleep(0.01)
        return client


def error_of(response, status, code, *fragments) -> str:
    """The one error shape, with this status and code, holding ``fragments``; the request id in the body
    and the header, no traceback. Returns the message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "request_id"} and body["error"]["code"] == code, body
    assert body["request_id"] == response.headers["X-Request-ID"]
    for fragment in fragments:
        assert fragment in body["error"]["message"], body
    assert "Traceback" not in response.text
    return body["error"]["message"]
