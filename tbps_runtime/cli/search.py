"""Command line: ``tbps index`` (embed a gallery) and ``tbps rank`` (search it). No PyTorch."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from tbps_runtime.cli.ingest import filter_options, row_filter
from tbps_runtime.clikit import TbpsCommand, quiet_option, setup_logging, threads_option, user_errors_exit_2
from tbps_runtime.contract import BACKENDS
from tbps_runtime.errors import ConfigError, InputFileNotFoundError, QueryError
from tbps_runtime.paths import printable

if TYPE_CHECKING:  # the commands import the runtime when they run: `tbps --help` stays light
    from tbps_runtime.gallery.npy import Gallery
    from tbps_runtime.gallery.shards import ShardedGallery
    from tbps_runtime.search import Match, PersonSearch
    from tbps_runtime.store.base import Store
    from tbps_runtime.store.rows import StoreHit

logger = logging.getLogger(__name__)

_backend_option = click.option("--backend", type=click.Choice(BACKENDS), default="onnxruntime", show_default=True,
                               help="Run the towers with onnxruntime (any machine) or the bundle's TensorRT engines.")
_threads_option = threads_option("onnxruntime threads per tower (default: the cores other processes leave idle).")


@click.command(cls=TbpsCommand)
@click.option("--bundle", required=True, type=click.Path(), help="The bundle made by tbps export.")
@click.option("--images", required=True, type=click.Path(),
              help="A directory (walked recursively) or a list file: one image path per line, "
                   "optionally TAB + identity.")
@click.option("-o", "--output", required=True, type=click.Path(),
              help="Gallery to write (g.npy; g.json goes beside it). With --shard, a directory "
                   "(DIR/ or an existing one) receives DIR/shard-I-of-N.npy.")
@click.option("--shard", "shard_spec", metavar="I/N",
              help="Embed only shard I of N (I counted from 0: 0..N-1) of the sorted image list: its I-th "
                   "contiguous block. Shards 0..N-1 together are the unsharded gallery; tbps rank takes "
                   "their directory as one gallery.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", metavar="[ADDRESS]",
              help="Embed with a Ray Data actor pool (pip install 'tbps[ray]'): a local Ray, or the "
                   "cluster at ADDRESS (e.g. auto, ray://head:10001). Combines with --shard.")
@click.option("--ray-actors", default=2, show_default=True, type=click.IntRange(min=1),
              help="With --ray: actors in the pool, each with --threads onnxruntime threads (default 1).")
@_backend_option
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--strict", is_flag=True, help="Stop at the first unreadable image instead of skipping it.")
@click.option("--faiss", "faiss_spec", metavar="SPEC",
              help="Also build a FAISS index (pip install 'tbps[faiss]') of the gallery with this factory "
                   "string, e.g. Flat or IVF1024,PQ64; written beside it (g.faiss; with --shard one per shard) and "
                   "used by tbps rank.")
@click.option("--force", is_flag=True,
              help="Replace the output's .npy/.json/.faiss even when they are not a tbps gallery (by default "
                   "such files, e.g. a bundle's manifest.json, are refused).")
@_threads_option
@quiet_option("No progress bar; warnings only.")
@user_errors_exit_2
def index_command(bundle: str, images: str, output: str, shard_spec: str | None, ray_address: str | None,
                  ray_actors: int, backend: str, batch_size: int, strict: bool, faiss_spec: str | None,
                  force: bool, threads: int | None, quiet: bool) -> None:
    """Embed a gallery of person crops into g.npy + g.json.

    Unreadable images are skipped and listed in g.json (--strict: fatal). An
    interrupted run resumes where it stopped when the same command is run again
    (per shard, with --shard). One run at a time writes a gallery: another run
    with the same -o is refused.
    """
    from tbps_runtime.gallery.shards import parse_shard, select_shard, shard_output
    from tbps_runtime.model.images import collect_images
    from tbps_runtime.outputs import output_lock
    from tbps_runtime.search import PersonSearch

    quiet = setup_logging(quiet)
    shard = parse_shard(shard_spec) if shard_spec is not None else None
    if shard is None and (output.endswith(("/", os.sep)) or Path(output).is_dir()):
        raise ConfigError(f"-o {output} is a directory: name the gallery file (e.g. {Path(output) / 'g.npy'}), "
                          "or add --shard I/N to write DIR/shard-I-of-N.npy into it")
    distributed = None
    if ray_address is not None:
        if backend != "onnxruntime":
            raise ConfigError("--ray runs the image tower with onnxruntime in every actor: drop --backend "
                              f"{backend}")
        from tbps_runtime.indexing.ray import RayIndexer, require_ray

        require_ray()  # before any work: a missing extra is one clear message
        distributed = RayIndexer(None if ray_address == "local" else ray_address, actors=ray_actors,
                                 threads=threads or 1)
    paths, identities = collect_images(images)
    info = None
    if shard is not None:
        paths, identities, info = select_shard(paths, identities, *shard)
        output = str(shard_output(output, *shard))
        logger.info("shard %d of %d: images %d..%d of %d", info.index, info.count, info.start,
                    info.start + len(paths) - 1, info.total)
    with output_lock(output, "indexing into"):  # held until the FAISS index too is written
        _check_index_outputs(output, images, bundle, faiss_spec, force)
        search = PersonSearch.from_bundle(bundle, backend=backend, threads=threads)
        if faiss_spec is not None:  # a missing faiss or a bad spec is refused before any indexing
            from tbps_runtime.gallery.faiss_gallery import check_faiss_spec

            check_faiss_spec(faiss_spec, search.manifest.num_slots, search.manifest.embed_dim)
        started = time.perf_counter()
        try:
            gallery = search.index(paths, output, identities=identities, batch_size=batch_size, strict=strict,
                                   progress=not quiet, shard=info, distributed=distributed, force=force)
        except KeyboardInterrupt:
            logger.warning("finished batches are kept: run the same command again to resume")
            raise
        seconds = time.perf_counter() - started
        if faiss_spec is not None:
            from tbps_runtime.climessages import in_flags  # messages hook
            from tbps_runtime.gallery.faiss_gallery import build_gallery_faiss

            try:
                build_gallery_faiss(gallery, faiss_spec, force=force)
            except ConfigError as e:  # the gallery itself is whole: say so, keep it
                raise ConfigError(f"{in_flags(e)}; the gallery {output} is complete, without a FAISS index") from e
        logger.info("indexed %d image(s) into %s in %.1f s (%.1f images/s)", len(gallery), output, seconds,
                    len(paths) / max(seconds, 1e-9))  # after the FAISS index: an error there stays the only line
    click.echo(str(output))


def _check_index_outputs(output: str, images: str, bundle: str, faiss_spec: str | None, force: bool) -> None:
    """Refuse, before any work, outputs that are inputs (the list file, the bundle's files) or that are not
    tbps's to replace (a manifest.json beside -o X.npy), unless --force."""
    from tbps_runtime.gallery.faiss_gallery import check_faiss_output, faiss_path_for
    from tbps_runtime.gallery.npy import check_gallery_output, sidecar_path
    from tbps_runtime.outputs import check_outputs

    check_outputs({"-o": output, "the description beside -o,": sidecar_path(output),
                   "the FAISS index beside -o,": faiss_path_for(output) if faiss_spec else None},
                  {"the image list (--images)": [images] if Path(images).is_file() else [],
                   "a file of the bundle (--bundle)": _files_in(bundle)})
    check_gallery_output(output, force)
    if faiss_spec is not None:
        check_faiss_output(output, force)


def _files_in(directory: str | Path) -> list[Path]:
    """The files directly in ``directory`` (none when it is not one)."""
    directory = Path(directory)
    return [p for p in directory.iterdir() if p.is_file()] if directory.is_dir() else []


@click.command(cls=TbpsCommand, short_help="Rank a gallery or store for text queries, best first.")
@click.option("--gallery", "gallery_path", required=True, type=click.Path(),
              help="g.npy made by tbps index, or a directory of shards (tbps index --shard), ranked as one.")
@click.option("--query", "queries", multiple=True, help="What the person looks like (repeatable).")
@click.option("--queries", "queries_file", type=click.Path(dir_okay=False),
              help="A UTF-8 file with one query per line ('-': standard input).")
@click.option("--bundle", type=click.Path(), help="Default: the bundle recorded in g.json.")
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(min=1), help="Results per query.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON document on stdout: [{rank, score, path}, ...] for one --query, "
                   "a list of such lists (in query order) otherwise.")
@click.option("--show", "show_path", type=click.Path(dir_okay=False),
              help="Also draw the results into this PNG: one row per query, crops with rank and score.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False),
              help="Also write the results as a self-contained HTML page (crops embedded).")
@click.option("--exact", is_flag=True,
              help="Ignore the gallery's FAISS index (if any): exact Eq. 14 ranking of every row.")
@click.option("--nprobe", type=click.IntRange(min=1),
              help="FAISS IVF lists to visit per query (more: better recall, slower).")
@click.option("--rescore", type=click.IntRange(min=0), default=0, show_default=True,
              help="Score FAISS's best N candidates again exactly (Eq. 14) from the gallery's rows and keep "
                   "the best k: recall for compressed indexes (PQ) at a few row reads per query; 0 = off.")
@click.option("--explain", is_flag=True,
              help="In --show/--html, overlay each crop's attention heat map and shade the query's words by "
                   "the text attention (needs a bundle exported with tbps export --explain).")
@filter_options
@click.option("--per-track", is_flag=True,
              help="A store's tracks instead of its rows: each track once, by its best crop.")
@click.option("--like-row", "like_row", type=click.IntRange(min=0), metavar="ROW",
              help="Find similar (a store): row ROW's image embedding is the query, ranked by the same Eq. 14 (ROW "
                   "itself scores K and ranks first unless a filter leaves it out); with one --query, each slot "
                   "of the query is the normalised sum of the text's and the row's.")
@click.option("--min-score", "min_score", metavar="SCORE|auto",
              help="Drop results scoring below SCORE (Eq. 14); 'auto': a store's own threshold (tbps calibrate "
                   "--gallery) when it has one, else the one the bundle was calibrated with (tbps calibrate), so a "
                   "person who is not there gives no results.")
@_backend_option
@_threads_option
@quiet_option()
@user_errors_exit_2
def rank_command(gallery_path: str, queries: tuple[str, ...], queries_file: str | None, bundle: str | None, k: int,
                 as_json: bool, show_path: str | None, html_path: str | None, exact: bool, nprobe: int | None,
                 rescore: int, explain: bool, cameras: tuple[str, ...], sources: tuple[str, ...],
                 tracks: tuple[int, ...], since: str | None, until: str | None, per_track: bool,
                 min_score: str | None, backend: str, threads: int | None, quiet: bool,
                 like_row: int | None = None) -> None:
    """Rank a gallery for text queries, best first: rank, score, path (the score is the paper's Eq. 14).

    A store made by tbps ingest also gives camera, time and track, and takes filters (--camera, --since,
    --until, --track, --source) applied before the top k.
    """
    from tbps_runtime.gallery.open import load_gallery
    from tbps_runtime.paths import one_line
    from tbps_runtime.store.open import is_store_directory
    from tbps_runtime.outputs import check_writable
    from tbps_runtime.search import PersonSearch, apply_threshold, describe_search
    from tbps_runtime.text import check_queries

    quiet = setup_logging(quiet)
    texts = list(queries) + (_read_queries(queries_file) if queries_file is not None else [])
    if not texts:
        if like_row is None:
            raise ConfigError("give a query: --query 'a woman in a red coat' or --queries FILE")
    check_queries(texts)
    selection = row_filter(cameras, sources, tracks, since, until)
    for option, path in (("--show", show_path), ("--html", html_path)):
        if path:
            check_writable(path, option)  # before the search, so that its log line is not printed
    if like_row is not None:
        _rank_like(gallery_path, like_row, texts, bundle, k, as_json, bool(show_path or html_path), selection,
                   per_track, min_score, backend, threads)
        return
    if is_store_directory(gallery_path):
        _rank_store(gallery_path, texts, bundle, k, as_json, show_path, html_path, explain, selection, per_track,
                   min_score, backend, threads, single=len(queries) == 1 and queries_file is None,
                   queries_file=queries_file)
        return
    if not selection.empty or per_track:
        raise ConfigError(f"--camera/--source/--track/--since/--until and --per-track need a store made by tbps "
                          f"ingest; {gallery_path} is a plain gallery without camera or time")
    _refuse_image_folder(gallery_path, bundle)
    gallery = load_gallery(gallery_path)
    search = PersonSearch.from_bundle(_bundle_of(gallery, bundle), backend=backend, threads=threads)
    threshold = search.gallery_threshold(min_score)
    ranked = search.rank(texts, gallery, k=k, exact=exact, nprobe=nprobe, rescore=rescore)
    results, empty = apply_threshold(ranked, threshold)
    single = len(queries) == 1 and queries_file is None
    for text, why in zip(texts, empty):
        if why:
            logger.warning("%s%s", "" if single else f"{one_line(printable(text))}: ", why)
    inputs = {"the gallery being ranked (--gallery)": _gallery_files(gallery),
              "a file of the bundle (--bundle)": _files_in(search.directory),
              "the query file (--queries)": [queries_file] if queries_file not in (None, "-") else [],
              "a crop in the results": [m.path for matches in results for m in matches if m.path]}
    _write_pictures(search, texts, results, show_path, html_path, explain, inputs, notes=empty)
    logger.info("search: %s%s", describe_search(gallery, exact),
                f", best {max(k, rescore)} rescored exactly" if rescore and not exact else "")  # after the work: an error stays the only line
    if as_json:
        documents = [[m.to_json() for m in matches] for matches in results]
        if threshold is not None:  # stdout keeps its list shape; the answer's metadata is one line on stderr
            click.echo(json.dumps({"threshold": threshold.to_json(), "empty": empty}), err=True)
        click.echo(json.dumps(documents[0] if single else documents))
        return
    for text, matches in zip(texts, results):
        if not single:
            click.echo(f"query: {one_line(printable(text))}")
        _print_matches(matches)


def _write_pictures(search: PersonSearch, texts: list[str], results: list[list[Match]], show_path: str | None,
                    html_path: str | None, explain: bool, inputs: dict[str, list],
                    notes: list[str | None] | None = None, missing_videos: list[str] | None = None) -> None:
    """--show / --html / --explain: draw the results (and their attention) for people to look at;
    never over one of the command's ``inputs``. ``notes``: per query, why its answer is empty. One warning
    names the crops that could not be drawn and the ``missing_videos`` of the hits' links."""
    if explain and not (show_path or html_path):
        raise ConfigError("--explain draws into the pictures: add --show results.png and/or --html results.html")
    if not (show_path or html_path):
        return
    from tbps_runtime.outputs import check_outputs
    from tbps_runtime.report import draw

    check_outputs({"--show": show_path, "--html": html_path}, inputs)

    explanations = ([search.explain(text, [m.path for m in matches]) for text, matches in zip(texts, results)]
                    if explain else None)
    missing: list[str] = []  # both pictures draw the same crops: one warning for the two
    for path, write in ((show_path, draw.draw_results), (html_path, draw.write_html)):
        if path:
            write(texts, results, path, explanations=explanations, notes=notes, missing=missing)
            logger.info("wrote %s", path)
    draw.warn_missing(missing, missing_videos or ())


def _read_queries(path: str) -> list[str]:
    if path != "-" and not Path(path).is_file():
        raise InputFileNotFoundError(f"--queries: file not found: {path}")
    data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        where = "standard input" if path == "-" else path
        raise QueryError(f"--queries: {where} is not UTF-8 text ({e}): save it as UTF-8") from e
    texts = [line.strip() for line in lines if line.strip()]
    if not texts:
        raise QueryError(f"{path} holds no queries (one per line)")
    return texts


def _gallery_files(gallery: Gallery | ShardedGallery) -> list[Path]:
    """The files a gallery is read from: each (shard's) .npy, its .json and its FAISS index."""
    files = []
    for part in getattr(gallery, "shards", None) or [gallery]:
        files += [p for p in (part.path, part.sidecar, part.faiss_path) if p is not None]
    return files


def _bundle_of(gallery: Gallery | ShardedGallery, bundle: str | None) -> str:
    if bundle is not None:
        return bundle
    if not gallery.bundle:
        raise ConfigError(f"{gallery.sidecar.name} records no bundle: pass --bundle DIR")
    if not Path(gallery.bundle).is_dir():
        raise InputFileNotFoundError(f"the bundle recorded in {gallery.sidecar} is not at "
                                     f"{gallery.bundle} any more: pass --bundle DIR")
    return gallery.bundle


def _print_matches(matches: list[Match]) -> None:
    from tbps_runtime.paths import one_line

    for match in matches:  # one line per hit, whatever the file name holds
        click.echo(f"{match.rank:>4}  {match.score:8.4f}  {one_line(printable(str(match.path)))}")


def _refuse_image_folder(gallery_path: str, bundle: str | None) -> None:
    """Refuse --gallery naming a folder of images (no gallery in it), giving the command that embeds it."""
    import shlex

    from tbps_runtime.model.images import IMAGE_EXTENSIONS

    folder = Path(gallery_path)
    if not folder.is_dir() or any(p for p in folder.glob("*.npy") if not p.name.startswith(".")):
        return
    if not any(p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() for p in folder.rglob("*")):
        return
    output = folder.parent / "g.npy"  # beside the folder: the gallery records its crops relative to itself
    raise ConfigError(f"--gallery {gallery_path} is a folder of images, not a gallery: embed it first with "
                      f"`tbps index --bundle {shlex.quote(bundle) if bundle else 'BUNDLE'} --images "
                      f"{shlex.quote(gallery_path)} -o {shlex.quote(str(output))}`, then `tbps rank --gallery "
                      f"{shlex.quote(str(output))}`")


@dataclass(frozen=True)
class _ShownHit:
    """A store's hit as the pictures draw it: the crop's file, camera and time, the source at that moment."""

    rank: int
    score: float
    path: str
    detail: str
    link: str | None = None
    extra_paths: tuple[str, ...] = ()
    identity: None = None


def _rank_store(directory: str, texts: list[str], bundle: str | None, k: int, as_json: bool, show_path: str | None,
                html_path: str | None, explain: bool, selection: Any, per_track: bool, min_score: str | None,
                backend: str, threads: int | None, single: bool, queries_file: str | None) -> None:
    """``tbps rank`` on a store: filtered, exact; hits with camera, time, box and track."""
    from tbps_runtime.search import PersonSearch
    from tbps_runtime.store.answers import check_cameras
    from tbps_runtime.store.open import open_store

    with open_store(directory) as store:  # closed after the pictures and the output
        if bundle is None and not store.bundle:
            raise ConfigError(f"the store {directory} records no bundle: pass --bundle DIR")
        check_cameras(store, selection)
        search = PersonSearch.from_bundle(bundle or store.bundle, backend=backend, threads=threads)
        threshold = search.threshold_for(min_score, store)
        embedded = search.embed_texts(texts)  # (Q, K, d): once, for the search and the track rows of the pictures
        results = search.rank(embedded, store, k=k, row_filter=selection, per_track=per_track, min_score=min_score)
        answers = _say_threshold(store, embedded, results, selection, threshold, texts, single)
        if show_path or html_path:
            videos: list[str] = []
            shown = [[_shown(store, search, embedded[q:q + 1], hit, per_track, selection, videos) for hit in hits]
                     for q, hits in enumerate(results)]
            inputs = {"a file of the bundle (--bundle)": _files_in(search.directory),
                      "the query file (--queries)": [queries_file] if queries_file not in (None, "-") else [],
                      "a crop in the results": [s.path for hits in shown for s in hits],
                      "the store's catalog": [Path(directory) / "store.sqlite"]}
            _write_pictures(search, texts, shown, show_path, html_path, explain, inputs,
                            notes=[answer["empty"] for answer in answers], missing_videos=videos)
        logger.info("search: exact Eq. 14 over %d row(s) of the store %s, %s%s", len(store), directory,
                    selection.describe(), ", per track" if per_track else "")
        if as_json:
            documents = [[{**hit.to_json(), "path": str(store.crop_path(hit.record.crop)) if hit.record.crop
                           else None, "strength": strength,
                           **({} if threshold is None else {"threshold": threshold.to_json()})}
                          for hit, strength in zip(hits, answer["strengths"])]
                         for hits, answer in zip(results, answers)]
            click.echo(json.dumps(documents[0] if single else documents))
        else:
            _print_store_hits(store, texts, results, single)


def _say_threshold(store: Store, embedded: Any, results: list[list[StoreHit]], selection: Any, threshold: Any,
                   texts: list[str], single: bool) -> list[dict[str, Any]]:
    """On stderr: which threshold --min-score used (a warning when it is the bundle's, from another domain,
    or the store grew since its calibration) and why an answer is empty; returns the answers' strengths."""
    from tbps_runtime.store.answers import annotate, notices

    if threshold is not None:
        logger.info("--min-score: %.4g, the %s threshold", threshold.value,
                    {"store": "store's calibrated", "bundle": "bundle's", "given": "given"}[threshold.source])
    for notice in notices(threshold, store):
        logger.warning("%s", notice.replace("--gallery)", f"--gallery {store.location})"))
    answers = annotate(store, embedded, results, selection, threshold)
    for text, answer in zip(texts, answers):
        if answer["empty"]:
            logger.warning("%s%s", "" if single else f"{printable(text)}: ", answer["empty"])
    return answers


def _rank_like(directory: str, row: int, texts: list[str], bundle: str | None, k: int, as_json: bool,
               pictures: bool, selection: Any, per_track: bool, min_score: str | None, backend: str,
               threads: int | None) -> None:
    """``tbps rank --like-row ROW``: rows like a store's row (and one query's text, when given)."""
    from tbps_runtime.search import PersonSearch
    from tbps_runtime.store.like import like_query
    from tbps_runtime.store.open import is_store_directory, open_store

    if not is_store_directory(directory):
        raise ConfigError(f"--like-row needs a store made by tbps ingest; {directory} is a plain gallery")
    if len(texts) > 1 or pictures:
        raise ConfigError("--like-row takes at most one --query, and draws no pictures (--show/--html): drop "
                          + ("them" if pictures else "the other queries"))
    if isinstance(min_score, str) and min_score.strip().lower() == "auto":
        raise ConfigError("--min-score auto is a threshold calibrated for captions against crops; --like-row ranks "
                          "crops against a crop (ROW itself scores K): give a number")
    with open_store(directory) as store:
        if bundle is None and not store.bundle:
            raise ConfigError(f"the store {directory} records no bundle: pass --bundle DIR")
        search = PersonSearch.from_bundle(bundle or store.bundle, backend=backend, threads=threads)
        query = like_query(store, row, search.embed_texts(texts) if texts else None)  # (1, K, d)
        hits = search.rank(query, store, k=k, row_filter=selection, per_track=per_track, min_score=min_score)
        logger.info("search: exact Eq. 14 over %d row(s) of the store %s like row %d%s, %s%s", len(store), directory,
                    row, " and the query" if texts else "", selection.describe(), ", per track" if per_track else "")
        if as_json:
            click.echo(json.dumps([{**hit.to_json(), "path": str(store.crop_path(hit.record.crop))
                                    if hit.record.crop else None} for hit in hits[0]]))
        else:
            _print_store_hits(store, [f"like row {row}"], hits, True)


def _print_store_hits(store: Store, texts: list[str], results: list[list[StoreHit]], single: bool) -> None:
    """One line per hit: rank, score, camera, time, track, crop file."""
    from tbps_runtime.paths import one_line
    from tbps_runtime.store.rows import format_time

    for text, hits in zip(texts, results):
        if not single:
            click.echo(f"query: {one_line(printable(text))}")
        for hit in hits:
            record = hit.record
            when = "-" if record.time is None else format_time(record.time)
            track = "-" if record.track is None else str(record.track)
            extra = f" ({hit.track_rows} crops)" if hit.track_rows is not None else ""
            crop = one_line(printable(str(store.crop_path(record.crop)))) if record.crop else "-"
            click.echo(f"{hit.rank:>4}  {hit.score:8.4f}  {printable(record.camera)}  {when}  track {track}{extra}  "
                       f"{crop}")


def _shown(store: Store, search: PersonSearch, query: Any, hit: Any, per_track: bool, selection: Any,
           missing_videos: list[str]) -> _ShownHit:
    from tbps_runtime.ingest.sources import is_stream
    from tbps_runtime.store.rows import RowFilter, format_time

    record = hit.record
    if not record.crop:
        raise ConfigError(f"row {hit.row} of the store has no crop to draw")
    when = "no time" if record.time is None else format_time(record.time)[11:19] + "Z"
    detail = f"{record.camera}\n{when}" + ("" if record.track is None else f" · t{record.track}")
    link = None
    if record.offset is not None and not is_stream(record.source):
        if Path(record.source).is_file():
            link = f"{Path(record.source).resolve().as_uri()}#t={record.offset:.1f}"
        else:  # said once for the report (_write_pictures), not dropped in silence
            missing_videos.append(record.source)
    extra: tuple[str, ...] = ()
    if per_track and record.track is not None:  # the track's other best crops for this query
        inside = RowFilter(selection.cameras, selection.sources, (record.track,), selection.since, selection.until)
        others = search.rank(query, store, k=5, row_filter=inside)[0]  # query: its (1, K, d) embedding
        extra = tuple(str(store.crop_path(o.record.crop)) for o in others if o.row != hit.row and o.record.crop)[:4]
    return _ShownHit(hit.rank, hit.score, str(store.crop_path(record.crop)), detail, link, extra)
