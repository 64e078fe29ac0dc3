"""Open whatever gallery is at a path: a ``g.npy`` file, or a directory of shards ranked as one."""

from __future__ import annotations

from pathlib import Path

from tbps_runtime.gallery.shards import ShardedGallery, load_shard_directory
from tbps_runtime.gallery.storage import Gallery, load_gallery_file


def load_gallery(path: str | Path, mmap: bool = True) -> Gallery | ShardedGallery:
    """Read and validate ``g.npy`` and its ``g.json``; rows are memory-mapped unless ``mmap=False``.

    ``path`` may also be a directory of shard galleries (``tbps-index --shard``):
    that gives a :class:`~tbps_runtime.gallery.shards.ShardedGallery`, which ranks as
    the one gallery of all its shards' images.

    Returns:
        A :class:`~tbps_runtime.gallery.storage.Gallery`, or a
        :class:`~tbps_runtime.gallery.shards.ShardedGallery` for a directory.

    Raises:
        InputFileNotFoundError: no such file.
        BundleError: no ``g.json`` beside it, or the two disagree, or the array
            is not (N, K, d) float32; for a directory, shards that do not make one gallery.
    """
    path = Path(path)
    if path.is_dir():
        return load_shard_directory(path, mmap=mmap)
    return load_gallery_file(path, mmap=mmap)


MILVUS_REFERENCE = "milvus.json"  # in a store directory whose rows live in Milvus: where they are


def is_store_directory(path: str | Path) -> bool:
    """Whether ``path`` is a store directory: a local one (its SQLite catalog) or one whose rows are in Milvus."""
    from tbps_runtime.gallery.store import is_store

    return is_store(path) or (Path(path) / MILVUS_REFERENCE).is_file()


def open_store(directory: str | Path):
    """The store at ``directory``: a :class:`~tbps_runtime.gallery.store.LocalStore`, or a
    :class:`~tbps_runtime.gallery.milvus_store.MilvusStore` when the directory names a Milvus collection."""
    from tbps_runtime.gallery.store import LocalStore

    directory = Path(directory)
    reference = _milvus_reference(directory)
    if reference is None:
        return LocalStore.open(directory)
    from tbps_runtime.gallery.milvus_store import MilvusStore

    return MilvusStore.open(*reference, directory)


def create_store(directory: str | Path, *, fingerprint: str, num_slots: int, embed_dim: int,
                 bundle: str | Path | None = None, milvus: str | None = None):
    """Open the store at ``directory``, creating it when absent; ``milvus`` (``milvus://HOST:PORT/COLLECTION``
    or ``milvus-lite:PATH.db/COLLECTION``) keeps its rows in that collection (recorded in the directory, so
    later commands need only the directory).

    Raises:
        ConfigError: ``milvus`` differs from the collection the directory already names, or the directory
            is a local store.
    """
    from tbps_runtime.atomic import write_json_atomic
    from tbps_runtime.errors import ConfigError
    from tbps_runtime.gallery.store import LocalStore, is_store

    directory = Path(directory)
    reference = _milvus_reference(directory)
    if milvus is None and reference is None:
        return LocalStore.create(directory, fingerprint=fingerprint, num_slots=num_slots, embed_dim=embed_dim,
                                 bundle=bundle)
    if milvus is None:
        milvus_uri, collection = reference
    else:
        from tbps_runtime.gallery.milvus_store import parse_store_uri

        milvus_uri, collection = parse_store_uri(milvus)
        if not milvus_uri.startswith(("http://", "https://")):  # a milvus-lite file: kept inside the store
            lite = Path(milvus_uri).absolute()
            if not lite.is_relative_to(directory.absolute()):
                raise ConfigError(f"the milvus-lite file {milvus_uri} must be inside the gallery directory "
                                  f"{directory}, e.g. milvus-lite:{directory / 'rows.db'}/{collection}")
            milvus_uri = str(lite)
        if is_store(directory):
            raise ConfigError(f"{directory} is a local store: --store {milvus} needs a new directory")
        if reference is not None and reference != (milvus_uri, collection):
            raise ConfigError(f"{directory} keeps its rows in {reference[1]} at {reference[0]}, not --store {milvus}")
    from tbps_runtime.gallery.milvus_store import MilvusStore

    directory.mkdir(parents=True, exist_ok=True)
    store = MilvusStore.create(milvus_uri, collection, directory, fingerprint=fingerprint, num_slots=num_slots,
                               embed_dim=embed_dim, bundle=bundle)
    if reference is None:
        recorded = milvus_uri if milvus_uri.startswith(("http://", "https://")) else \
            str(Path(milvus_uri).relative_to(directory.absolute()))
        write_json_atomic(directory / MILVUS_REFERENCE, {"format": "tbps-milvus-store", "uri": recorded,
                                                         "collection": collection})
    return store


def _milvus_reference(directory: Path) -> tuple[str, str] | None:
    from tbps_runtime.atomic import read_json
    from tbps_runtime.errors import BundleError

    path = directory / MILVUS_REFERENCE
    if not path.is_file():
        return None
    try:
        record = read_json(path)
    except ValueError as e:
        raise BundleError(f"{path} is not valid JSON ({e})") from None
    if not (isinstance(record, dict) and record.get("format") == "tbps-milvus-store"
            and isinstance(record.get("uri"), str) and isinstance(record.get("collection"), str)):
        raise BundleError(f"{path} is not a tbps Milvus store reference")
    uri = record["uri"]
    if not uri.startswith(("http://", "https://")):  # a milvus-lite file: inside the store directory, always
        from tbps_runtime.paths import resolve_inside

        uri = str(resolve_inside(directory, uri, str(path)).absolute())
    return uri, record["collection"]
