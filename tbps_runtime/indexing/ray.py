"""Distributed indexing with Ray Data: ``tbps index --ray [ADDRESS]`` (the ``tbps[ray]`` extra).

The image list becomes a Ray dataset of ``(position, path)`` rows; a pool of
actors (``map_batches`` with a class and an ``ActorPoolStrategy`` of
``--ray-actors`` actors), each holding the bundle's image tower
in onnxruntime, decodes and embeds batches of it; the driver gathers the rows
in list order into the same resumable partial index the local indexer uses
(:class:`~tbps_runtime.gallery.npy.PartialIndex`) and writes the same gallery
atomically. Unreadable images are skipped and listed, or fatal with
``--strict``, exactly as locally.

Every Ray worker must see the bundle and the images at the same paths as the
driver (a shared file system) and have tbps installed. ``ray`` is imported
only when used, so the plain runtime install works without it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from tqdm import tqdm

from tbps_runtime.errors import ConfigError
from tbps_runtime.model.encoder import Encoder

if TYPE_CHECKING:
    from tbps_runtime.gallery.npy import PartialIndex

logger = logging.getLogger(__name__)

RAY_EXTRA_HINT = "pip install 'tbps[ray]' (Ray Data)"


def require_ray() -> Any:
    """Import and return ``ray`` (with Ray Data), or raise ConfigError naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data is a separate part of the ray package)
    except ImportError as e:
        raise ConfigError(f"indexing with Ray needs Ray Data, which is not installed ({e}): {RAY_EXTRA_HINT}",
                          code="ray_missing", reason=str(e), hint=RAY_EXTRA_HINT) from e
    return ray


class EmbedImagesActor:
    """One actor of the pool: loads the bundle once, then embeds batches of ``(position, path)`` rows.

    Returns, per batch, every position with its (K, d) row (zeros where the image could not be read)
    and its error message ("" when read), so that the driver can apply the skip/strict rules.
    """

    def __init__(self, bundle: str, threads: int):
        self.encoder = Encoder.from_bundle(bundle, threads=threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        positions, pixels, failures = self.encoder.read_batch(paths)
        rows = np.zeros((len(paths), *self.encoder.slot_shape), np.float32)  # (b, K, d)
        if positions:
            rows[np.asarray(positions)] = self.encoder.embed_pixels(pixels)
        errors = np.array([failures.get(i, "") for i in range(len(paths))], dtype=object)
        return {"position": np.asarray(batch["position"], np.int64), "embedding": rows, "error": errors}


class RayIndexer:
    """Embeds a :class:`PartialIndex` with a Ray actor pool; pass it as ``PersonSearch.index(distributed=...)``.

    Args:
        address: a Ray cluster to connect to (``"auto"``, ``"ray://head:10001"``, ...); None starts a
            local Ray, shut down again afterwards. If Ray is already initialised in this process
            (e.g. by a test or a notebook), that Ray is used and left running.
        actors: actors in the pool (each loads the image tower once).
        threads: onnxruntime threads, and CPUs reserved, per actor.
    """

    def __init__(self, address: str | None = None, actors: int = 2, threads: int = 1):
        if actors < 1 or threads < 1:
            raise ConfigError(f"actors and threads must be at least 1, got {actors} and {threads}",
                              code="parameter_invalid", names=("actors", "threads"))
        self.address = address or None
        self.actors = actors
        self.threads = threads

    def embed_into(self, encoder: Encoder, partial: PartialIndex, paths: Sequence[str], batch_size: int,
                   strict: bool, progress: bool) -> None:
        """Embed ``paths[partial.done:]`` into ``partial``, in list order, recording each batch as it arrives."""
        ray = require_ray()
        started_here = self._connect(ray)
        context = ray.data.DataContext.get_current()
        saved = context.execution_options.preserve_order, context.enable_progress_bars
        # Rows must come back in list order: the partial index records "every image before `end` is done".
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        # Ray Data logs each execution and warns that its bars are off: our own bar says it all.
        ray_data_logger = logging.getLogger("ray.data")
        saved_level = ray_data_logger.level
        ray_data_logger.setLevel(logging.ERROR)
        try:
            self._run(ray, encoder, partial, paths, batch_size, strict, progress)
        finally:
            context.execution_options.preserve_order, context.enable_progress_bars = saved
            ray_data_logger.setLevel(saved_level)
            if started_here:
                ray.shutdown()

    def _connect(self, ray: Any) -> bool:
        """Start or join Ray; True when this call started it (and must shut it down)."""
        if ray.is_initialized():
            return False
        try:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"the Ray cluster at {self.address}" if self.address else "a local Ray"
            raise ConfigError(f"could not start or join {where}: {e}") from e
        logger.info("Ray: %s", "connected to " + self.address if self.address else "started locally")
        return True

    def _run(self, ray: Any, encoder: Encoder, partial: PartialIndex, paths: Sequence[str], batch_size: int,
             strict: bool, progress: bool) -> None:
        if partial.done >= len(paths):
            return
        items = [{"position": i, "path": paths[i]} for i in range(partial.done, len(paths))]
        dataset = ray.data.from_items(items).map_batches(
            EmbedImagesActor, fn_constructor_kwargs={"bundle": str(encoder.directory.resolve()),
                                                     "threads": self.threads},
            batch_size=batch_size, batch_format="numpy", num_cpus=self.threads,
            compute=ray.data.ActorPoolStrategy(size=self.actors))
        with tqdm(total=len(paths), initial=partial.done, desc="index (ray)", unit="img",
                  disable=not progress) as bar:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                positions = np.asarray(batch["position"], np.int64)
                if not len(positions):
                    continue
                if positions[0] != partial.done or np.any(np.diff(positions) != 1):
                    raise RuntimeError(f"Ray returned rows out of order (at {positions[0]}, expected "
                                       f"{partial.done}): preserve_order was not honoured")
                errors = [str(e) for e in batch["error"]]
                failures = {int(p): e for p, e in zip(positions, errors) if e}
                if failures and strict:
                    raise partial.strict_failure(failures[min(failures)])
                readable = np.array([not e for e in errors])
                partial.record(int(positions[-1]) + 1, positions[readable].tolist(),
                               np.asarray(batch["embedding"], np.float32)[readable], failures)
                bar.update(len(positions))
