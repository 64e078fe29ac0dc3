"""Command line: ``tbps serve`` (the search service over HTTP). No PyTorch."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import replace

import click

from tbps_runtime.clikit import TbpsCommand, quiet_option, setup_logging, threads_option, user_errors_exit_2
from tbps_runtime.errors import ConfigError

logger = logging.getLogger(__name__)


@click.command(cls=TbpsCommand, short_help="Serve search over HTTP: the API, the page and /metrics.")
@click.option("--gallery", required=True, type=click.Path(),
              help="What to search: g.npy (tbps index), a directory of shards, or a store (tbps ingest).")
@click.option("--bundle", type=click.Path(file_okay=False), help="Default: the bundle the gallery records.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Any other than loopback needs an API key.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0: any free port; the log line says which).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Worker processes, each with its own loaded bundle.")
@click.option("--api-key-file", type=click.Path(dir_okay=False),
              help="A file whose first line is the API key that data requests must send (Authorization: Bearer "
                   "KEY or X-API-Key: KEY). Default: the TBPS_API_KEY environment variable, if set.")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN",
              help="Let pages from ORIGIN (https://host[:port]) call the API from a browser (repeatable; "
                   "default: none).")
@click.option("--batch-window-ms", default=5.0, show_default=True, type=click.FloatRange(0, 1000),
              help="How long a text query waits for others to share its text-tower call.")
@click.option("--max-batch", default=32, show_default=True, type=click.IntRange(1, 1024),
              help="Queries per text-tower call at most.")
@threads_option("onnxruntime threads per tower (default: the cores other processes leave idle, less one for the "
                "thread that answers requests).")
@click.option("--audit-days", default=90.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="A store's audit log (every search, crop, frame and clip request) keeps this many days.")
@quiet_option("Warnings only on stderr.")
@user_errors_exit_2
def serve_command(gallery: str, bundle: str | None, host: str, port: int, workers: int, api_key_file: str | None,
                  cors_origins: tuple[str, ...], batch_window_ms: float, max_batch: int, threads: int | None,
                  quiet: bool, audit_days: float = 90.0) -> None:
    """Serve search over HTTP (FastAPI): POST /search, /embed/text, /embed/image, /explain, GET /crops/{row},
    a store's /gallery/* endpoints, /healthz, /readyz, /metrics, OpenAPI at /docs, the operator page at /.

    Listens on 127.0.0.1 unless --host says otherwise; on any other address an API key is required
    (--api-key-file or TBPS_API_KEY). Needs pip install 'tbps[serve]'.
    """
    from tbps_runtime.serve import ServeSettings
    from tbps_runtime.serve.security import check_exposure, check_origins, resolve_api_key

    quiet = setup_logging(quiet)
    settings = ServeSettings(gallery=gallery, bundle=bundle, host=host, port=port, workers=workers,
                             api_key_file=api_key_file, cors_origins=check_origins(cors_origins),
                             batch_window_ms=batch_window_ms, max_batch=max_batch, threads=threads, quiet=quiet,
                             audit_days=audit_days)
    settings = settings.with_key(resolve_api_key(api_key_file))
    check_exposure(host, settings.api_key)  # before anything is loaded or bound
    uvicorn = _require_serve_extra()
    from tbps_runtime.serve.service import Service

    service = Service.load(settings)  # a bad bundle or gallery fails here, before binding
    listening = _bind(host, port)
    port = listening.getsockname()[1]  # the one chosen, for --port 0
    url = _url(host, port)
    logger.info("serving %s (%d rows, bundle %s) at %s%s%s", gallery, service.rows(), service.search.fingerprint[:12],
                url, f" with {workers} workers" if workers > 1 else "",
                "; API key required" if settings.api_key else "")
    _quiet_uvicorn()
    if workers == 1:
        from tbps_runtime.serve.app import create_app

        config = uvicorn.Config(create_app(settings, service), log_config=None, access_log=False,
                                server_header=False, lifespan="on")
        uvicorn.Server(config).run(sockets=[listening])
        return
    service.close()
    del service  # each worker loads its own
    os.environ.update(replace(settings, port=port).to_environment())
    listening.close()  # uvicorn binds again, for its workers; the check above caught a port in use
    uvicorn.run("tbps_runtime.serve.app:app_from_environment", factory=True, host=host, port=port, workers=workers,
                log_config=None, access_log=False, server_header=False)


def _require_serve_extra():
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise ConfigError(f"tbps serve needs FastAPI and uvicorn ({e.name} is missing): pip install 'tbps[serve]'") \
            from None
    return uvicorn


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; a port in use or an address not of this machine is a user error."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        listening = socket.socket(family, kind, proto)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind(address)
        listening.listen(2048)
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror or e}): pick another --port or --host") \
            from None
    listening.set_inheritable(True)
    return listening


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _quiet_uvicorn() -> None:
    """uvicorn's start-up lines are ours to say (one line with the URL); its errors still show."""
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)


if __name__ == "__main__":
    serve_command()
