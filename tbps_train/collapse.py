"""Watching the ranking loss for collapse while training.

Summed over the batch, Eq. 9's hardest-negative hinge has a stationary state:
every embedding of a slot equal, so every hardest negative equals its
positive, every hinge sits at alpha and the gradient through the max is
zero. A slot there shows three things at once, measured here per step and
averaged per epoch: nearly every hinge active, the slot's ranking term at
its collapsed value (N anchors x 2 directions x alpha, i.e. a ratio of 1),
and no spread between the embeddings of different people.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

# A slot is collapsed when, over an epoch, its hinges average at least this share of alpha ...
COLLAPSED_LOSS_RATIO = 0.9
# ... and its embeddings of different people have a mean cosine above 1 - this, in both modalities.
COLLAPSED_SPREAD = 0.02


def slot_names(groups: dict[str, slice]) -> list[str]:
    """["global", "coarse_1", .., "fine_P"] for the slot ranges of ``model.slot_groups()``."""
    names = []
    for group, span in groups.items():
        count = span.stop - span.start
        names += ["global"] if group == "global" else [f"{group}_{i + 1}" for i in range(count)]
    return names


def spread(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N, d), (N,) -> 1 - mean cosine over pairs of different people (0: all equal; ~1: orthogonal)."""
    unit = F.normalize(embeddings.float(), dim=-1)
    other = labels.unsqueeze(0) != labels.unsqueeze(1)  # (N, N)
    if not other.any():
        return torch.tensor(float("nan"))
    return 1.0 - (unit @ unit.T)[other].mean()


@torch.no_grad()
def slot_health(image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, margin: float) -> dict[str, float]:
    """One slot of one batch: image, text (N, d), labels (N,).

    Returns ``active_hinges`` (share of the 2N hardest-negative hinges above 0),
    ``loss_ratio`` (Eq. 9 with margin ``margin`` summed over the batch, divided by
    its collapsed value 2 N alpha) and ``spread_image``/``spread_text`` (:func:`spread`).
    """
    image_unit, text_unit = F.normalize(image.float(), dim=-1), F.normalize(text.float(), dim=-1)
    sims = image_unit @ text_unit.T  # (N, N)
    positive = sims.diagonal()
    same = labels.unsqueeze(1) == labels.unsqueeze(0)
    masked = sims.masked_fill(same, float("-inf"))
    hinges = torch.cat([margin - positive + masked.amax(dim=1), margin - positive + masked.amax(dim=0)])
    hinges = hinges[torch.isfinite(hinges)].clamp(min=0)  # anchors without a negative drop out
    if not len(hinges):
        return {}
    return {"active_hinges": float((hinges > 0).float().mean()),
            "loss_ratio": float(hinges.mean() / margin),
            "spread_image": float(spread(image, labels)),
            "spread_text": float(spread(text, labels))}


def is_collapsed(health: dict[str, float]) -> bool:
    """True when a slot's (epoch-mean) health shows the collapsed state (module docstring)."""
    return (bool(health) and health["loss_ratio"] >= COLLAPSED_LOSS_RATIO
            and max(health["spread_image"], health["spread_text"]) <= COLLAPSED_SPREAD)


@dataclass
class CollapseMonitor:
    """Per-epoch means of :func:`slot_health` for every slot; ``margin`` is alpha."""

    names: list[str]
    margin: float
    sums: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(float)))
    steps: int = 0

    def add(self, image_slots: torch.Tensor, text_slots: torch.Tensor, labels: torch.Tensor) -> None:
        """image_slots, text_slots (N, K, d) of one step; labels (N,)."""
        for k, name in enumerate(self.names):
            for key, value in slot_health(image_slots[:, k], text_slots[:, k], labels, self.margin).items():
                self.sums[name][key] += value
        self.steps += 1

    def epoch_summary(self) -> dict[str, dict[str, float]]:
        """{slot: {active_hinges, loss_ratio, spread_image, spread_text}} averaged over the epoch's steps;
        resets the sums."""
        summary = {name: {key: round(total / max(self.steps, 1), 4) for key, total in sums.items()}
                   for name, sums in self.sums.items()}
        self.sums.clear()
        self.steps = 0
        return summary


def collapsed_slots(summary: dict[str, dict[str, float]]) -> list[str]:
    """The slots of an :meth:`CollapseMonitor.epoch_summary` that are collapsed."""
    return [name for name, health in summary.items() if is_collapsed(health)]
