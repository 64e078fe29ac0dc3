"""``tbps ingest --cameras FILE [--follow]``: reading the camera file, and following its cameras."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from typing import Any

import click

from tbps_runtime.errors import TbpsError
from tbps_runtime.paths import printable

logger = logging.getLogger(__name__)


def load_camera_file(path: str) -> list[Any]:
    """The cameras of the camera file at ``path``; a file with problems prints one ``error:`` line per
    problem (each naming its entry) and exits 2, before anything is opened or written."""
    from tbps_runtime.ingest.cameras import CameraFileError, load_cameras

    try:
        return load_cameras(path)
    except CameraFileError as e:
        for problem in e.problems:
            click.echo(f"error: {printable(' '.join(problem.splitlines()))}", err=True)
        sys.exit(2)


def camera_parts(cameras: list[Any], detector: str | None, min_score: float | None, keep: int, window: float,
                 batch_size: int, threads: int | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each camera's detector (its own, or the command's ``detector``) and ingest settings, by name."""
    from tbps_runtime.ingest.detectors import open_detector
    from tbps_runtime.ingest.pipeline import IngestSettings

    detectors = {c.name: open_detector(c.detector or detector, min_score=min_score, threads=threads) for c in cameras}
    settings = {c.name: IngestSettings(detectors[c.name].name, c.fps, c.name, c.start, keep, window, batch_size)
                for c in cameras}
    return detectors, settings


def follow(cameras: list[Any], store: Any, encoder: Any, detectors: dict[str, Any], settings: dict[str, Any],
            gallery_dir: str, as_json: bool) -> None:
    """Follow ``cameras`` (inside the store's writing) until SIGTERM or Ctrl-C; prints their last states with
    ``as_json``; exits 2 after the stop when a camera could not be followed (its settings changed)."""
    from tbps_runtime.ingest.follow import follow_cameras

    stop = threading.Event()
    names = ", ".join(c.name for c in cameras)
    logger.info("following %d camera(s) (%s) into %s: SIGTERM or Ctrl-C stops, keeping every appended window",
                len(cameras), names, gallery_dir)
    with _stop_on_sigterm(stop):
        states = follow_cameras(cameras, store, encoder, detectors, settings, stop)
    logger.info("stopped: every finished window is in %s", gallery_dir)
    if as_json:
        click.echo(json.dumps({"gallery": printable(str(gallery_dir)),
                               "cameras": {name: state.to_json() for name, state in states.items()}}))
    failed = [f"camera {name}: {state.error}" for name, state in states.items() if state.status == "failed"]
    if failed:
        raise TbpsError(f"{len(failed)} of {len(cameras)} camera(s) could not be followed: {failed[0]}"
                        + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""))


class _stop_on_sigterm:
    """SIGTERM sets ``stop`` inside the block (the previous handler comes back after it)."""

    def __init__(self, stop: threading.Event):
        self.stop, self.previous = stop, None

    def __enter__(self) -> None:
        self.previous = signal.signal(signal.SIGTERM, lambda *_: self.stop.set())

    def __exit__(self, *exc: Any) -> None:
        signal.signal(signal.SIGTERM, self.previous)


__all__ = ["camera_parts", "follow", "load_camera_file"]
