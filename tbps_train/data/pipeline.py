"""From dataset records to training and evaluation batches."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from tbps_runtime.model.images import normalize, read_image, resize_rgb
from tbps_train.data.records import ImageRecord

logger = logging.getLogger(__name__)

# Splits whose resized pixels fit in this many bytes are decoded once and kept.
PRELOAD_BUDGET_BYTES = 2 << 30


@dataclass
class CaptionTable:
    """Every caption of a split: ``image_index[i]`` is the record caption i describes."""

    texts: list[str]
    image_index: np.ndarray  # (Q,) int64
    person_ids: np.ndarray  # (Q,) int64, as written in the annotation file

    @classmethod
    def from_records(cls, records: list[ImageRecord]) -> "CaptionTable":
        texts, image_index, person_ids = [], [], []
        for i, record in enumerate(records):
            for caption in record.captions:
                texts.append(caption)
                image_index.append(i)
                person_ids.append(record.person_id)
        return cls(texts, np.asarray(image_index, np.int64), np.asarray(person_ids, np.int64))


class ImageStore(torch.utils.data.Dataset):
    """Resized (H, W, 3) uint8 crops of a split, decoded once when they fit in memory."""

    def __init__(self, records: list[ImageRecord], image_size: tuple[int, int], progress: bool = True):
        self.paths = [r.image_path for r in records]
        self.image_size = tuple(image_size)
        self._cache: np.ndarray | None = None
        height, width = self.image_size
        if len(self.paths) * height * width * 3 <= PRELOAD_BUDGET_BYTES:
            self._cache = np.stack([
                self._load(i) for i in tqdm(range(len(self.paths)), desc="decode images", disable=not progress, leave=False)
            ])

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def preloaded(self) -> bool:
        return self._cache is not None

    def __getitem__(self, index: int) -> np.ndarray:
        return self._cache[index] if self._cache is not None else self._load(index)

    def _load(self, index: int) -> np.ndarray:
        return resize_rgb(read_image(self.paths[index]), self.image_size)

    def batch(self, indices: np.ndarray) -> torch.Tensor:
        """(B,) indices -> (B, 3, H, W) float32 normalised pixels."""
        return collate_pixels([self[int(i)] for i in indices])


def collate_pixels(crops: list[np.ndarray]) -> torch.Tensor:
    """(H, W, 3) uint8 crops -> (B, 3, H, W) float32 normalised pixels."""
    return torch.from_numpy(normalize(np.stack(crops)))


def random_flips(count: int, generator: torch.Generator, probability: float) -> torch.Tensor:
    """Sec. 4.1's augmentation: which of ``count`` images to mirror, each with ``probability``."""
    return torch.rand(count, generator=generator) < probability


def flip_horizontally(pixels: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Mirror the images of (B, 3, H, W) ``pixels`` where the (B,) bool ``flips`` is set."""
    return torch.where(flips[:, None, None, None], pixels.flip(-1), pixels)


def batches(count: int, batch_size: int, generator: torch.Generator) -> Iterator[np.ndarray]:
    """A shuffled pass over ``count`` items in batches of ``batch_size``; a last
    batch of one is dropped (the ranking loss has no negative for it)."""
    order = torch.randperm(count, generator=generator).numpy()
    for start in range(0, count, batch_size):
        chunk = order[start:start + batch_size]
        if len(chunk) >= 2:
            yield chunk
