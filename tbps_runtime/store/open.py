"""Open the store at a directory: a local one, or one whose rows live in Milvus (the directory then holds
``milvus.json``, naming the collection, and the crops)."""

from __future__ import annotations

from pathlib import Path

from tbps_runtime.atomic import read_json, write_json_atomic
from tbps_runtime.errors import BundleError, ConfigError
from tbps_runtime.paths import resolve_inside
from tbps_runtime.store.base import Store
from tbps_runtime.store.local import LocalStore, is_store

MILVUS_REFERENCE = "milvus.json"  # in a store directory whose rows live in Milvus: where they are


def is_store_directory(path: str | Path) -> bool:
    """Whether ``path`` is a store directory: a local one (its SQLite catalog) or one whose rows are in Milvus."""
    return is_store(path) or (Path(path) / MILVUS_REFERENCE).is_file()


def open_store(directory: str | Path) -> Store:
    """The store at ``directory``: a :class:`~tbps_runtime.store.local.LocalStore`, or a
    :class:`~tbps_runtime.store.milvus.MilvusStore` when the directory names a Milvus collection.

    Raises:
        InputFileNotFoundError: no store there.
        BundleError: a store that is damaged or from a newer tbps.
        StoreError: its Milvus cannot be reached.
    """
    directory = Path(directory)
    reference = _milvus_reference(directory)
    if reference is None:
        return LocalStore.open(directory)
    from tbps_runtime.store.milvus import MilvusStore  # pymilvus only when a store needs it

    return MilvusStore.open(*reference, directory)


def create_store(directory: str | Path, *, fingerprint: str, num_slots: int, embed_dim: int,
                 bundle: str | Path | None = None, milvus: str | None = None) -> Store:
    """Open the store at ``directory``, creating it when absent; ``milvus`` (``milvus://HOST:PORT/COLLECTION``
    or ``milvus-lite:PATH.db/COLLECTION``) keeps its rows in that collection (recorded in the directory, so
    later commands need only the directory).

    Raises:
        ConfigError: ``milvus`` differs from the collection the directory already names, or the directory
            is a local store.
    """
    directory = Path(directory)
    reference = _milvus_reference(directory)
    if milvus is None and reference is None:
        return LocalStore.create(directory, fingerprint=fingerprint, num_slots=num_slots, embed_dim=embed_dim,
                                 bundle=bundle)
    milvus_uri, collection = reference if milvus is None else _new_reference(directory, milvus, reference)
    from tbps_runtime.store.milvus import MilvusStore

    directory.mkdir(parents=True, exist_ok=True)
    store = MilvusStore.create(milvus_uri, collection, directory, fingerprint=fingerprint, num_slots=num_slots,
                               embed_dim=embed_dim, bundle=bundle)
    if reference is None:
        recorded = milvus_uri if milvus_uri.startswith(("http://", "https://")) else \
            str(Path(milvus_uri).relative_to(directory.absolute()))
        write_json_atomic(directory / MILVUS_REFERENCE, {"format": "tbps-milvus-store", "uri": recorded,
                                                         "collection": collection})
    return store


def _new_reference(directory: Path, milvus: str, reference: tuple[str, str] | None) -> tuple[str, str]:
    """The (pymilvus URI, collection) of the address ``milvus`` for a store at ``directory``, checked."""
    from tbps_runtime.store.milvus_expr import parse_store_uri

    milvus_uri, collection = parse_store_uri(milvus)
    if not milvus_uri.startswith(("http://", "https://")):  # a milvus-lite file: kept inside the store
        lite = Path(milvus_uri).absolute()
        if not lite.is_relative_to(directory.absolute()):
            raise ConfigError(f"the milvus-lite file {milvus_uri} must be inside the gallery directory "
                              f"{directory}, e.g. milvus-lite:{directory / 'rows.db'}/{collection}")
        milvus_uri = str(lite)
    if is_store(directory):
        raise ConfigError(f"{directory} is a local store: a Milvus store ({milvus}) needs a new directory",
                          code="store_local_not_milvus", directory=str(directory), milvus=milvus)
    if reference is not None and reference != (milvus_uri, collection):
        raise ConfigError(f"{directory} keeps its rows in {reference[1]} at {reference[0]}, not in {milvus}",
                          code="store_milvus_elsewhere", directory=str(directory), collection=reference[1],
                          uri=reference[0], milvus=milvus)
    return milvus_uri, collection


def _milvus_reference(directory: Path) -> tuple[str, str] | None:
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
        uri = str(resolve_inside(directory, uri, str(path)).absolute())
    return uri, record["collection"]


__all__ = ["MILVUS_REFERENCE", "create_store", "is_store_directory", "open_store"]
