"""Command line: ``tbps ingest`` (footage into a store) and ``tbps gallery`` (look after a store). No PyTorch."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import click

from tbps_runtime.clikit import (TbpsCommand, TbpsGroup, json_option, quiet_option, setup_logging, threads_option,
                                 user_errors_exit_2)
from tbps_runtime.errors import ConfigError, InputFileNotFoundError, OutputError, StoreError, TbpsError
from tbps_runtime.paths import printable

logger = logging.getLogger(__name__)


def _time_option(name: str, help: str) -> Any:
    return click.option(name, metavar="TIME", help=help + " ISO-8601; no zone means UTC (2026-03-02T14:00).")


def filter_options(command: Any) -> Any:
    """--camera, --source, --track, --since, --until: the rows a command applies to."""
    options = [
        click.option("--camera", "cameras", multiple=True, help="Only this camera (repeatable)."),
        click.option("--source", "sources", multiple=True, help="Only rows cut from this source (repeatable)."),
        click.option("--track", "tracks", multiple=True, type=click.IntRange(0), help="Only this track (repeatable)."),
        _time_option("--since", "Only rows seen at or after this time."),
        _time_option("--until", "Only rows seen before this time."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def row_filter(cameras: tuple[str, ...], sources: tuple[str, ...], tracks: tuple[int, ...], since: str | None,
               until: str | None) -> Any:
    from tbps_runtime.ingest.sources import source_spellings
    from tbps_runtime.store.rows import RowFilter, parse_time

    return RowFilter(tuple(cameras), source_spellings(sources), tuple(tracks),
                     None if since is None else parse_time(since, "--since"),
                     None if until is None else parse_time(until, "--until"))


@click.command(cls=TbpsCommand, short_help="Cut person crops from videos and streams into a store.")
@click.argument("sources", nargs=-1)
@click.option("--gallery", "gallery_dir", required=True, type=click.Path(file_okay=False),
              help="The store directory to append to (created when new).")
@click.option("--bundle", type=click.Path(file_okay=False),
              help="The bundle whose image tower embeds the crops (default: the one the store was made with).")
@click.option("--camera", help="Camera name of the rows: 1 to 1024 characters, no control characters (default: "
                               "each source's name, e.g. cam3 for cam3.mp4, with control characters as _). Only "
                               "with one source.")
@click.option("--fps", type=float, default=5.0, show_default=True,
              help="Frames sampled per second of video (0: every frame). Below 4, people move more than a "
                   "body width between frames and tracks match on widened boxes.")
@click.option("--start", metavar="TIME",
              help="When the source's first frame was taken (ISO-8601; no zone means UTC; every row's time must "
                   "lie in 1900..3000). Default: the container's creation time; a stream's: when it was opened.")
@click.option("--detector", default=None, metavar="hog|PATH.onnx",
              help="Person detector: OpenCV's HOG (default) or an ultralytics YOLO export (.onnx, class 0 = person).")
@click.option("--detections", type=click.Path(dir_okay=False),
              help="Boxes from an upstream pipeline instead of a detector: a MOT-challenge text file "
                   "(frame,id,left,top,width,height,conf,...), frames counted from 1. Only with one source.")
@click.option("--min-score", "min_score", type=click.FloatRange(0, 1), help="Drop detections scoring below this.")
@click.option("--keep", default=2, show_default=True, type=click.IntRange(1, 100),
              help="Crops kept per track per window (the best: confident, large, sharp).")
@click.option("--window", default=10.0, show_default=True, type=click.FloatRange(min=0.1, max=86400),
              help="Seconds of video per appended batch: an interruption loses at most one.")
@click.option("--store", "milvus", metavar="milvus://HOST:PORT/COLLECTION",
              help="Keep the rows in Milvus (pip install 'tbps[milvus]'); milvus-lite:DIR/rows.db/NAME for a local "
                   "file. Recorded in --gallery, which keeps the crops.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@threads_option("onnxruntime threads (default: the cores other processes leave idle).")
@click.option("--cameras", "cameras_file", type=click.Path(dir_okay=False), metavar="FILE",
              help="A camera file (TOML: name, url or path, fps, detector, timezone, start, retention, stall per "
                   "[[camera]]) instead of SOURCE...; each camera is ingested once, or followed with --follow.")
@click.option("--follow", is_flag=True,
              help="With --cameras: follow every camera until SIGTERM or Ctrl-C, one thread each, reconnecting "
                   "with back-off, reopening stalled streams, recording each camera's state and applying its "
                   "retention.")
@json_option("Print one JSON document on stdout: a report per source.")
@quiet_option()
@user_errors_exit_2
def ingest_command(sources: tuple[str, ...], gallery_dir: str, bundle: str | None, camera: str | None, fps: float,
                   start: str | None, detector: str | None, detections: str | None, min_score: float | None,
                   keep: int, window: float, milvus: str | None, batch_size: int, threads: int | None,
                   cameras_file: str | None, follow: bool, as_json: bool, quiet: bool) -> None:
    """Cut person crops from video files, streams (rtsp://, http://...) or folders of frames, track them,
    and append them to a searchable store with camera and time.

    Resumable: an interrupted run continues when the same command runs again; a source ingested to its end
    is skipped, whatever the spelling of its path (files are keyed by their resolved path, streams by
    their URL without credentials). A source that fails part-way keeps its rows, and the command exits
    with status 2 after the other sources; a store that fails (a full disk) stops the command, keeping
    every window appended before.
    """
    from tbps_runtime.ingest.detectors import open_detector
    from tbps_runtime.ingest.pipeline import IngestSettings, ingest_source
    from tbps_runtime.ingest.sources import is_stream, shown_source, source_name
    from tbps_runtime.model.encoder import Encoder
    from tbps_runtime.store.open import create_store
    from tbps_runtime.store.rows import check_name, parse_time

    quiet = setup_logging(quiet)
    if cameras_file is not None:
        if sources or camera or start or detections:
            raise ConfigError("--cameras FILE names the sources, their cameras and starts: give no SOURCE, --camera, "
                              "--start or --detections with it (fps is per camera, in the file)")
        return _ingest_cameras(cameras_file, follow, gallery_dir, bundle, detector, min_score, keep, window, milvus,
                               batch_size, threads, as_json)
    if follow:
        raise ConfigError("--follow follows the cameras of a camera file: give --cameras FILE")
    if not sources:
        raise ConfigError("give the SOURCE(s) to ingest, or --cameras FILE")
    if len(sources) > 1 and (camera or detections):
        raise ConfigError("--camera and --detections describe one source: give one source per command")
    if camera is not None:
        check_name(camera, "--camera")
    start_time = None if start is None else parse_time(start, "--start")
    missing = [s for s in sources if not is_stream(s) and not Path(s).exists()]
    if missing:  # a typo fails before any work
        raise InputFileNotFoundError(f"no such video or folder: {shown_source(missing[0])}"
                                     + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    for source in sources:  # a name no store can keep fails before any work too
        source_name(source)
    bundle = _store_bundle(gallery_dir, bundle)
    chosen = open_detector(detector, detections=detections, min_score=min_score, threads=threads)
    settings = IngestSettings(chosen.name, fps or None, camera, start_time, keep, window, batch_size)
    encoder = Encoder.from_bundle(bundle, threads=threads, spinning=False)  # decoding runs beside it
    store = create_store(gallery_dir, fingerprint=encoder.fingerprint, num_slots=encoder.slot_shape[0],
                         embed_dim=encoder.slot_shape[1], bundle=bundle, milvus=milvus)
    with store:
        store.check_bundle(encoder.fingerprint, bundle)
        with store.writing("ingesting into"):
            reports, failed, stopped = _ingest_each(sources, lambda source: ingest_source(
                source, store, encoder, chosen, settings, progress=not quiet))
    _finish(gallery_dir, reports, failed, stopped, len(sources), as_json)


def _finish(gallery_dir: str, reports: list[Any], failed: list[str], stopped: TbpsError | None, total: int,
            as_json: bool) -> None:
    """Print ``--json``, then end as the run did: stopped (re-raised), sources failed (one error), or fine."""
    if as_json:
        click.echo(json.dumps({"gallery": printable(str(gallery_dir)), "sources": [r.to_json() for r in reports],
                               "errors": failed}))
    if stopped is not None:
        raise stopped
    if failed:
        raise _SourcesFailed(failed, total)


def _store_bundle(gallery_dir: str, bundle: str | None) -> str:
    """The bundle to ingest with: ``--bundle``, or the one an existing store records."""
    from tbps_runtime.store.open import is_store_directory

    existing = is_store_directory(gallery_dir)
    bundle = bundle or (_recorded_bundle(gallery_dir) if existing else None)
    if bundle is None:
        raise ConfigError(f"--bundle is needed to make the store {gallery_dir}")
    if not Path(bundle).is_dir():
        raise InputFileNotFoundError(f"no bundle at {bundle}" + (" (the one the store records): pass --bundle"
                                                                   if existing else ""))
    return bundle


def _ingest_cameras(path: str, follow: bool, gallery_dir: str, bundle: str | None, detector: str | None,
                    min_score: float | None, keep: int, window: float, milvus: str | None, batch_size: int,
                    threads: int | None, as_json: bool) -> None:
    """``--cameras FILE``: each camera once, as its sources would be; with ``follow``, followed until SIGTERM
    or Ctrl-C (tbps_runtime.cli.cameras)."""
    from tbps_runtime.cli import cameras as camera_file
    from tbps_runtime.ingest.pipeline import ingest_source
    from tbps_runtime.model.encoder import Encoder
    from tbps_runtime.store.open import create_store

    cameras = camera_file.load_camera_file(path)
    bundle = _store_bundle(gallery_dir, bundle)
    detectors, settings = camera_file.camera_parts(cameras, detector, min_score, keep, window, batch_size, threads)
    encoder = Encoder.from_bundle(bundle, threads=threads, spinning=False)  # one tower for every camera
    store = create_store(gallery_dir, fingerprint=encoder.fingerprint, num_slots=encoder.slot_shape[0],
                         embed_dim=encoder.slot_shape[1], bundle=bundle, milvus=milvus)
    by_source = {c.source: c.name for c in cameras}
    with store:
        store.check_bundle(encoder.fingerprint, bundle)
        with store.writing("following cameras into" if follow else "ingesting into"):
            if follow:
                return camera_file.follow(cameras, store, encoder, detectors, settings, gallery_dir, as_json)
            reports, failed, stopped = _ingest_each(tuple(by_source), lambda source: ingest_source(
                source, store, encoder, detectors[by_source[source]], settings[by_source[source]]))
    _finish(gallery_dir, reports, failed, stopped, len(cameras), as_json)


def _ingest_each(sources: tuple[str, ...], ingest: Callable[[str], Any]
                 ) -> tuple[list[Any], list[str], TbpsError | None]:
    """``ingest(source)`` for each source; a source that fails does not stop the others, a store that fails
    (a full disk, a catalog it cannot write) stops them all: (reports, errors, the store's error or None)."""
    from tbps_runtime.climessages import in_flags  # messages hook
    from tbps_runtime.ingest.sources import source_name

    reports, failed = [], []
    for source in sources:
        try:
            report = ingest(source)
        except (StoreError, OutputError) as e:  # the store cannot take rows now: every later source would fail
            name, line = source_name(source), in_flags(e)  # messages hook: the library's error in flags
            failed.append(line if name in line else f"{name}: {line}")
            return reports, failed, type(e)(failed[-1])
        except TbpsError as e:  # this source only: the others still run
            name, line = source_name(source), in_flags(e)  # messages hook: the library's error in flags
            failed.append(line if name in line else f"{name}: {line}")
            continue
        reports.append(report)
        if report.error:
            failed.append(report.error)
        _log_report(report)
    return reports, failed, None


def _recorded_bundle(directory: str) -> str | None:
    """The bundle the store at ``directory`` records."""
    from tbps_runtime.store.open import open_store

    with open_store(directory) as store:
        return store.bundle


class _SourcesFailed(TbpsError):
    def __init__(self, failures: list[str], total: int):
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        super().__init__(f"{len(failures)} of {total} source(s) failed; rows before each failure are kept: "
                         f"{failures[0]}{more}")


def _log_report(report: Any) -> None:
    if report.skipped:
        return
    from tbps_runtime.ingest.sources import is_stream

    rate = report.frames / report.seconds if report.seconds else 0.0
    resumed = f", resumed after frame {report.resumed_after}" if report.resumed_after is not None else ""
    pace = "" if is_stream(report.source) else _real_time(report.video_seconds, report.seconds)  # live: warned
    logger.info("%s (camera %s): %d frames, %d detections, %d tracks, %d crops in %.1f s (%.1f frames/s%s)%s",
                _one_line(report.source), _one_line(report.camera), report.frames, report.detections, report.tracks,
                report.crops, report.seconds, rate, pace, resumed)


def _real_time(video_seconds: float, seconds: float) -> str:
    """How a file's processing compared to real time, for its summary: faster, or how a live camera at the
    same settings would fall behind."""
    if not video_seconds or not seconds:
        return ""
    speed = video_seconds / seconds
    said = f"; {video_seconds:.1f} s of video at {speed:.2g}x real time" if speed < 10 else \
        f"; {video_seconds:.1f} s of video at {speed:.0f}x real time"
    if speed < 1.0:
        said += (": slower than it plays, a live camera at these settings would fall behind (lower --fps, use a "
                 "lighter detector or give more --threads)")
    return said


@click.group(cls=TbpsGroup, name="gallery", short_help="Look after a store: info, prune, delete, reindex, audit.")
def gallery_group() -> None:
    """Look after a store made by tbps ingest: info, prune, delete, reindex, audit."""


@gallery_group.command("info")
@click.argument("directory", type=click.Path(file_okay=False))
@json_option()
@user_errors_exit_2
def info_command(directory: str, as_json: bool) -> None:
    """Cameras, time span, rows, tracks and size of a store."""
    from tbps_runtime.store.open import open_store

    from tbps_runtime.ingest.cameras import describe_state

    with open_store(directory) as store:
        info = store.info()
        followed = store.camera_states()  # what tbps ingest --follow recorded: status, frames/s, errors
    if as_json:
        click.echo(json.dumps({**info, "followed": followed}))
        return
    click.echo(f"store      {_one_line(str(info['store']))}")
    click.echo(f"rows       {info['rows']} in {info['segments']} segment(s), {info['tracks']} track(s), "
               f"{info['sources']} source(s)")
    click.echo(f"time       {info['first'] or '-'} .. {info['last'] or '-'}"
               + (f" ({info['undated_rows']} row(s) without a time)" if info["undated_rows"] else ""))
    click.echo(f"size       {info['bytes'] / 2**20:.1f} MiB")
    click.echo(f"bundle     {_one_line(str(info['bundle']))} (fingerprint {info['fingerprint'][:12]})")
    for camera in info["cameras"]:  # a name from the catalog, whoever wrote it: one line each, always
        click.echo(f"camera     {_one_line(camera['camera'])}: {camera['rows']} row(s), {camera['tracks']} "
                   f"track(s), {camera['first'] or '-'} .. {camera['last'] or '-'}")
    for name, state in sorted(followed.items()):
        click.echo(f"followed   {_one_line(name)}: {_one_line(describe_state(state))}")


def _one_line(text: str) -> str:
    """A name for one line of a table: printable, its control characters and line breaks as escapes."""
    from tbps_runtime.paths import one_line

    return one_line(printable(text))


def _deletion(directory: str, row_filter: Any, older_than: float | None, yes: bool, dry_run: bool,
              as_json: bool) -> None:
    from tbps_runtime.store.open import open_store

    with open_store(directory) as store, store.writing("deleting from"):
        removal = store.delete(row_filter, older_than=older_than, everything=yes, dry_run=dry_run)
    if as_json:
        click.echo(json.dumps({"dry_run": dry_run, **removal.to_json()}))
        return
    verb = "would remove" if dry_run else "removed"
    cameras = ", ".join(f"{_one_line(c)} {n}" for c, n in sorted(removal.cameras.items()))
    click.echo(f"{verb} {removal.rows} row(s)" + (f" ({cameras})" if cameras else "")
               + ("" if dry_run else f", {removal.crops} crop(s), {removal.segments} segment(s), "
                                     f"{removal.bytes / 2**20:.1f} MiB"))


@gallery_group.command("prune", short_help="Retention: remove rows older than AGE.")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--older-than", "older_than", required=True, metavar="AGE",
              help="Remove rows seen longer ago than this: 30d, 12h, 90m (rows without a time: added).")
@click.option("--camera", "cameras", multiple=True, help="Only this camera (repeatable).")
@click.option("--yes", is_flag=True, help="Allow removing every row of the store.")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@json_option()
@user_errors_exit_2
def prune_command(directory: str, older_than: str, cameras: tuple[str, ...], yes: bool, dry_run: bool,
                  as_json: bool) -> None:
    """Retention: remove rows older than AGE with their embeddings and crops, and say what went."""
    from tbps_runtime.store.rows import RowFilter, parse_age

    _deletion(directory, RowFilter(cameras=tuple(cameras)), parse_age(older_than), yes, dry_run, as_json)


@gallery_group.command("delete", short_help="Remove rows by camera, source, track or time range.")
@click.argument("directory", type=click.Path(file_okay=False))
@filter_options
@click.option("--yes", is_flag=True, help="Allow removing every row of the store.")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@json_option()
@user_errors_exit_2
def delete_command(directory: str, cameras: tuple[str, ...], sources: tuple[str, ...], tracks: tuple[int, ...],
                   since: str | None, until: str | None, yes: bool, dry_run: bool, as_json: bool) -> None:
    """Remove the rows of cameras, sources, tracks or a time range, with their embeddings and crops."""
    _deletion(directory, row_filter(cameras, sources, tracks, since, until), None, yes, dry_run, as_json)


@gallery_group.command("reindex", short_help="Embed a store's crops again with another bundle.")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--bundle", required=True, type=click.Path(file_okay=False), help="The newer bundle.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="The new store directory (the old one is left as it is).")
@click.option("--store", "milvus", metavar="milvus://HOST:PORT/COLLECTION",
              help="Keep the new store's rows in Milvus (as tbps ingest --store); default: a local store.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@threads_option("onnxruntime threads.")
@quiet_option()
@user_errors_exit_2
def reindex_command(directory: str, bundle: str, output: str, milvus: str | None, batch_size: int,
                    threads: int | None, quiet: bool) -> None:
    """Embed a store's crops again with another bundle, into a new store with the same metadata
    (local or Milvus, either way)."""
    from tbps_runtime.ingest.reindex import reindex

    quiet = setup_logging(quiet)
    started = time.perf_counter()
    rows = reindex(directory, bundle, output, batch_size=batch_size, threads=threads, progress=not quiet,
                   milvus=milvus)
    logger.info("re-embedded %d row(s) into %s in %.1f s", rows, output, time.perf_counter() - started)
    click.echo(str(output))


def _add_audit_command() -> None:
    from tbps_runtime.cli.audit import audit_command  # tbps gallery audit: its own module

    gallery_group.add_command(audit_command)


_add_audit_command()
