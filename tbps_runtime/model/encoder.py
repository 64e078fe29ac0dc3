"""The towers in, embeddings out: a loaded bundle's backend, tokenizer and preprocessing.

    encoder = Encoder.from_bundle("m.bundle")
    texts = encoder.embed_texts(["a woman in a red coat"])     # (1, K, d)
    crops = encoder.embed_images(["a.jpg", "b.jpg"])           # (2, K, d)

Everything that embeds is built on an :class:`Encoder`: the public API
(:class:`tbps_runtime.search.PersonSearch`), the Ray actors that index a
gallery, and the attention maps (:mod:`tbps_runtime.model.attention`).

Safe to share between threads: onnxruntime sessions are thread-safe, the
tokenizer runs under a lock, and lazily created sessions (and TensorRT
contexts) are created under locks.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np

from tbps_runtime.contract import EMBEDDINGS, IMAGE_TOWER, MANIFEST_FILE, TEXT_TOWER, TowerSpec
from tbps_runtime.errors import BundleError, DataError, InputFileNotFoundError
from tbps_runtime.model.backends import Backend, create_backend, files_for, open_session
from tbps_runtime.model.bundle import Manifest, check_supported, load_manifest, verify_files
from tbps_runtime.model.images import normalize, read_image, resize_rgb
from tbps_runtime.model.tokenizer import load_tokenizer, tokenize
from tbps_runtime.paths import resolve_inside
from tbps_runtime.text import check_queries

ImageInput = Union[str, Path, np.ndarray]  # a file, or an (H, W, 3) uint8 RGB crop


class Encoder:
    """A loaded bundle: both towers on one backend, its tokenizer and its preprocessing."""

    def __init__(self, directory: Path, manifest: Manifest, backend: Backend, tokenizer_json: str):
        self.directory = Path(directory)
        self.manifest = manifest
        self.backend = backend
        self._tokenizer = load_tokenizer(tokenizer_json, manifest.max_text_length)
        self._tokenizer_lock = threading.Lock()  # concurrent calls into one Tokenizer fail ("Already borrowed")
        self._sessions: dict[str, Any] = {}
        self._sessions_lock = threading.Lock()

    @classmethod
    def from_bundle(cls, directory: str | Path, backend: str = "onnxruntime", threads: int | None = None,
                    providers: Sequence[str] | None = None, device: int = 0,
                    spinning: bool | None = None) -> Encoder:
        """Load a bundle once, after checking the SHA-256 of every file the backend will read.

        Args:
            directory: the bundle (made by ``tbps export``).
            backend: ``"onnxruntime"`` or ``"tensorrt"``.
            threads: onnxruntime intra-op threads (default: the cores other processes leave idle).
            providers: onnxruntime execution providers, e.g. ``["CUDAExecutionProvider"]``.
            device: the CUDA device of the TensorRT backend.
            spinning: whether onnxruntime's idle threads spin-wait (default: the thread policy's choice);
                False when this process has other busy threads, e.g. video decoding.
        """
        directory = Path(directory)
        manifest = load_manifest(directory)
        check_supported(directory, manifest)
        tokenizer_path = resolve_inside(directory, manifest.tokenizer, f"{directory / MANIFEST_FILE}: 'tokenizer'")
        verify_files(directory, manifest, [manifest.tokenizer, *files_for(backend, manifest)])
        try:
            tokenizer_json = tokenizer_path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise BundleError(f"{tokenizer_path} is not UTF-8 text ({e}): re-export the bundle") from e
        engine = create_backend(backend, directory, manifest, threads=threads, providers=providers, device=device,
                                spinning=spinning)
        return cls(directory, manifest, engine, tokenizer_json)

    @property
    def fingerprint(self) -> str:
        """The bundle's weights; a gallery records the fingerprint of the bundle that embedded it."""
        return self.manifest.fingerprint

    @property
    def threads(self) -> int | None:
        """The onnxruntime sessions' intra-op threads (the policy's or a pinned count); None on TensorRT."""
        choice = getattr(self.backend, "threads", None)
        return choice.threads if choice is not None else None

    @property
    def slot_shape(self) -> tuple[int, int]:
        """(K, d): the shape of one embedding."""
        return self.manifest.num_slots, self.manifest.embed_dim

    def empty(self) -> np.ndarray:
        """(0, K, d) float32: the embeddings of no input."""
        return np.zeros((0, *self.slot_shape), np.float32)

    # ---- text --------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Captions -> ``input_ids`` and ``attention_mask``, both (B, L) int64 (L: the batch's longest)."""
        with self._tokenizer_lock:
            return tokenize(self._tokenizer, list(texts))

    def tokens(self, input_ids: Sequence[int]) -> list[str]:
        """Token ids -> the tokenizer's tokens (``"?"`` for an id it does not know)."""
        with self._tokenizer_lock:
            return [self._tokenizer.id_to_token(int(i)) or "?" for i in input_ids]

    def embed_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Captions -> (N, K, d) float32, every slot L2-normalised. Captions beyond the
        bundle's max length are truncated (with a logged warning).

        Raises:
            QueryError: an empty or whitespace-only text.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        check_queries(texts)
        if not texts:
            return self.empty()
        out = []
        ids_spec, mask_spec = TEXT_TOWER.inputs
        for start in range(0, len(texts), batch_size):
            input_ids, attention_mask = self.tokenize(texts[start:start + batch_size])  # (B, L)
            out.append(self.run_tower(TEXT_TOWER, {ids_spec.name: input_ids, mask_spec.name: attention_mask}))
        return np.concatenate(out)

    # ---- images ------------------------------------------------------------------------

    def load_image(self, image: ImageInput) -> np.ndarray:
        """A crop (a path or an (h, w, 3) uint8 RGB array) -> (H, W, 3) uint8 at the bundle's image size.

        Raises:
            InputFileNotFoundError: no such file.
            DataError: an unreadable image or a malformed array.
        """
        if not isinstance(image, np.ndarray):
            image = read_image(image)
        return resize_rgb(image, tuple(self.manifest.image_size))  # (H, W, 3) uint8

    def read_batch(self, paths: Sequence[str | Path]) -> tuple[list[int], np.ndarray, dict[int, str]]:
        """Decode and resize a batch of image files, keeping going past unreadable ones:
        (readable positions, (b, H, W, 3) uint8 of those, {position: error message} of the others)."""
        positions, crops, failures = [], [], {}
        for position, path in enumerate(paths):
            try:
                crops.append(self.load_image(path))
                positions.append(position)
            except (DataError, InputFileNotFoundError) as e:
                failures[position] = str(e)
        height, width = self.manifest.image_size
        pixels = np.stack(crops) if crops else np.zeros((0, height, width, 3), np.uint8)
        return positions, pixels, failures

    def pixel_values(self, pixels: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 -> the image tower's input, (B, 3, H, W) float32 normalised by the bundle's mean/std."""
        return normalize(pixels, tuple(self.manifest.mean), tuple(self.manifest.std))

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 crops at the bundle's image size -> (B, K, d) float32."""
        (spec,) = IMAGE_TOWER.inputs
        return self.run_tower(IMAGE_TOWER, {spec.name: self.pixel_values(pixels)})

    def run_tower(self, tower: TowerSpec, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """One tower call on the backend -> (B, K, d) float32, B the batch of the feeds.

        Raises:
            BundleError: the tower returned another shape (a graph that ignores its batch,
                or K/d other than the manifest's).
        """
        embeddings = self.backend.run(tower, feeds)
        self.check_call(tower, feeds, {EMBEDDINGS.name: embeddings})
        return embeddings

    def check_call(self, tower: TowerSpec, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        """Each of ``outputs`` of one call of ``tower`` has the contract's shape for ``feeds``: their batch
        (and sequence length), the manifest's fixed sizes (K, d; an explain graph's token counts and map).

        Raises:
            BundleError: another shape (a graph that ignores its batch, or sizes other than the manifest's).
        """
        sizes = {**self.manifest.tower_sizes(tower), **tower.call_sizes(feeds)}
        for spec in tower.outputs:
            if spec.name not in outputs:
                continue
            got, want = np.shape(outputs[spec.name]), tuple(a if isinstance(a, int) else sizes[a] for a in spec.axes)
            if got != want:
                raise BundleError(f"{self.directory}: {tower.name} returned {spec.name} of shape {got} for a batch "
                                  f"of {sizes['batch']}; its manifest promises {want}: re-export the bundle")

    def embed_images(self, images: Sequence[ImageInput], batch_size: int = 32) -> np.ndarray:
        """Crops (paths or (H, W, 3) uint8 RGB arrays) -> (N, K, d) float32, every slot L2-normalised.

        Raises:
            DataError: an unreadable image or a malformed array.
        """
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
        images = list(images)
        if not images:
            return self.empty()
        out = []
        for start in range(0, len(images), batch_size):
            pixels = np.stack([self.load_image(image) for image in images[start:start + batch_size]])  # (B, H, W, 3)
            out.append(self.embed_pixels(pixels))
        return np.concatenate(out)

    # ---- the bundle's other graphs -----------------------------------------------------

    def onnx_session(self, spec: TowerSpec) -> Any:
        """An onnxruntime session (CPU) of one of the bundle's other ONNX graphs, e.g. an explain graph;
        created once, after checking the file's SHA-256, with the backend's session options, its
        declared inputs and outputs checked against the contract as the towers' are.

        Raises:
            BundleError: the manifest records no such file, the file was modified, or its graph does not
                match the contract.
        """
        with self._sessions_lock:
            if spec.name not in self._sessions:
                verify_files(self.directory, self.manifest, [spec.onnx_file])
                self._sessions[spec.name] = open_session(self.directory / spec.onnx_file, spec, self.manifest,
                                                         getattr(self.backend, "options", None))
            return self._sessions[spec.name]

    def run_graph(self, spec: TowerSpec, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One call of another of the bundle's graphs (:meth:`onnx_session`) -> its outputs in the contract's
        order, each checked by :meth:`check_call` as a tower call's embeddings are."""
        spec.check_feeds(feeds)
        values = self.onnx_session(spec).run([t.name for t in spec.outputs], feeds)
        outputs = {t.name: np.asarray(v, t.dtype) for t, v in zip(spec.outputs, values)}
        self.check_call(spec, feeds, outputs)
        return [outputs[t.name] for t in spec.outputs]
