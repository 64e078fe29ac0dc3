"""Command line: ``tbps-index`` (embed a gallery) and ``tbps-rank`` (search it). No PyTorch."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from tbps_runtime.cli.support import MAX_THREADS, TbpsCommand, quiet_option, setup_logging, user_errors_exit_2
from tbps_runtime.contract import BACKENDS
from tbps_runtime.errors import ConfigError, InputFileNotFoundError, QueryError
from tbps_runtime.paths import printable

if TYPE_CHECKING:  # the commands import the runtime when they run: `tbps --help` stays light
    from tbps_runtime.gallery.shards import ShardedGallery
    from tbps_runtime.gallery.storage import Gallery
    from tbps_runtime.search import Match, PersonSearch

logger = logging.getLogger(__name__)

_backend_option = click.option("--backend", type=click.Choice(BACKENDS), default="onnxruntime", show_default=True,
                               help="Run the towers with onnxruntime (any machine) or the bundle's TensorRT engines.")
_threads_option = click.option("--threads", type=click.IntRange(1, MAX_THREADS),
                               help="onnxruntime threads per tower (default: the cores other processes leave idle).")


@click.command(cls=TbpsCommand)
@click.option("--bundle", required=True, type=click.Path(), help="The bundle made by tbps-export.")
@click.option("--images", required=True, type=click.Path(),
              help="A directory (walked recursively) or a list file: one image path per line, "
                   "optionally TAB + identity.")
@click.option("-o", "--output", required=True, type=click.Path(),
              help="Gallery to write (g.npy; g.json goes beside it). With --shard, a directory "
                   "(DIR/ or an existing one) receives DIR/shard-I-of-N.npy.")
@click.option("--shard", "shard_spec", metavar="I/N",
              help="Embed only shard I of N (I counted from 0: 0..N-1) of the sorted image list: its I-th "
                   "contiguous block. Shards 0..N-1 together are the unsharded gallery; tbps-rank takes "
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
                   "used by tbps-rank.")
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
            from tbps_runtime.gallery.faiss_gallery import build_gallery_faiss

            try:
                build_gallery_faiss(gallery, faiss_spec, force=force)
            except ConfigError as e:  # the gallery itself is whole: say so, keep it
                raise ConfigError(f"{e}; the gallery {output} is complete, without a FAISS index") from e
        logger.info("indexed %d image(s) into %s in %.1f s (%.1f images/s)", len(gallery), output, seconds,
                    len(paths) / max(seconds, 1e-9))  # after the FAISS index: an error there stays the only line
    click.echo(str(output))


def _check_index_outputs(output: str, images: str, bundle: str, faiss_spec: str | None, force: bool) -> None:
    """Refuse, before any work, outputs that are inputs (the list file, the bundle's files) or that are not
    tbps's to replace (a manifest.json beside -o X.npy), unless --force."""
    from tbps_runtime.gallery.faiss_gallery import check_faiss_output, faiss_path_for
    from tbps_runtime.gallery.storage import check_gallery_output, sidecar_path
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


@click.command(cls=TbpsCommand)
@click.option("--gallery", "gallery_path", required=True, type=click.Path(),
              help="g.npy made by tbps-index, or a directory of shards (tbps-index --shard), ranked as one.")
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
                   "the text attention (needs a bundle exported with tbps-export --explain).")
@_backend_option
@_threads_option
@quiet_option()
@user_errors_exit_2
def rank_command(gallery_path: str, queries: tuple[str, ...], queries_file: str | None, bundle: str | None, k: int,
                 as_json: bool, show_path: str | None, html_path: str | None, exact: bool, nprobe: int | None,
                 rescore: int, explain: bool, backend: str, threads: int | None, quiet: bool) -> None:
    """Rank a gallery for text queries, best first: rank, score, path (the score is the paper's Eq. 14)."""
    from tbps_runtime.gallery.open import load_gallery
    from tbps_runtime.model.encoder import check_queries
    from tbps_runtime.outputs import check_writable
    from tbps_runtime.search import PersonSearch, describe_search

    quiet = setup_logging(quiet)
    texts = list(queries) + (_read_queries(queries_file) if queries_file is not None else [])
    if not texts:
        raise ConfigError("give a query: --query 'a woman in a red coat' or --queries FILE")
    check_queries(texts)
    for option, path in (("--show", show_path), ("--html", html_path)):
        if path:
            check_writable(path, option)  # before the search, so that its log line is not printed
    gallery = load_gallery(gallery_path)
    search = PersonSearch.from_bundle(_bundle_of(gallery, bundle), backend=backend, threads=threads)
    results = search.rank(texts, gallery, k=k, exact=exact, nprobe=nprobe, rescore=rescore)
    inputs = {"the gallery being ranked (--gallery)": _gallery_files(gallery),
              "a file of the bundle (--bundle)": _files_in(search.directory),
              "the query file (--queries)": [queries_file] if queries_file not in (None, "-") else [],
              "a crop in the results": [m.path for matches in results for m in matches if m.path]}
    _write_pictures(search, texts, results, show_path, html_path, explain, inputs)
    logger.info("search: %s%s", describe_search(gallery, exact),
                f", best {max(k, rescore)} rescored exactly" if rescore and not exact else "")  # after the work: an error stays the only line
    single = len(queries) == 1 and queries_file is None
    if as_json:
        documents = [[m.to_json() for m in matches] for matches in results]
        click.echo(json.dumps(documents[0] if single else documents))
        return
    for text, matches in zip(texts, results):
        if not single:
            click.echo(f"query: {text}")
        _print_matches(matches)


def _write_pictures(search: PersonSearch, texts: list[str], results: list[list[Match]], show_path: str | None,
                    html_path: str | None, explain: bool, inputs: dict[str, list]) -> None:
    """--show / --html / --explain: draw the results (and their attention) for people to look at;
    never over one of the command's ``inputs``."""
    if explain and not (show_path or html_path):
        raise ConfigError("--explain draws into the pictures: add --show results.png and/or --html results.html")
    if not (show_path or html_path):
        return
    from tbps_runtime.outputs import check_outputs
    from tbps_runtime.report import draw

    check_outputs({"--show": show_path, "--html": html_path}, inputs)

    explanations = ([search.explain(text, [m.path for m in matches]) for text, matches in zip(texts, results)]
                    if explain else None)
    for path, write in ((show_path, draw.draw_results), (html_path, draw.write_html)):
        if path:
            write(texts, results, path, explanations=explanations)
            logger.info("wrote %s", path)


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
    for match in matches:
        click.echo(f"{match.rank:>4}  {match.score:8.4f}  {printable(str(match.path))}")
