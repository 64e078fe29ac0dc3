"""Feature-map sizes of the convolutional backbones, computed without running them."""

from __future__ import annotations


def strided_size(image_size: tuple[int, int], halvings: int) -> tuple[int, int]:
    """(H, W) -> (h, w) after ``halvings`` stride-2 convolutions or pools whose padding is half their
    kernel (7×7/p3, 3×3/p1, 1×1/p0, max pool 3/p1): each maps a length n to (n - 1) // 2 + 1."""
    h, w = image_size
    for _ in range(halvings):
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    return h, w
