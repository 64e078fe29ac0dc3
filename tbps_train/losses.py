"""The learning objective of paper Sec. 3.3 (Eq. 7-13), as pure functions.

Each function takes tensors and scalars and returns a scalar tensor;
:func:`compute_losses` returns named terms ending in ``_loss`` and the
trainer sums them (Eq. 13).

Under data parallelism every process holds a slice of the global batch.
Given a ``gather`` function (tbps_train.distributed), the terms a process
returns are its anchors' share of the global-batch loss: hardest negatives
are mined over the whole global batch, Eq. 7's mean divides by the global
batch size, so the shares summed over processes equal the one-process loss.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from tbps_train.config import LossConfig


# (local rows) -> (the global batch's rows, index of this process's first row)
Gather = Callable[[torch.Tensor], tuple[torch.Tensor, int]]


class GlobalBatch(NamedTuple):
    """One slot's embeddings of the whole global batch; this process's anchors start at ``start``."""

    image: torch.Tensor  # (N, d)
    text: torch.Tensor  # (N, d)
    labels: torch.Tensor  # (N,)
    start: int


def identity_loss(logits: torch.Tensor, labels: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Eq. 7: l_ID(e) = -y log softmax(e W_ID), averaged over the batch.

    logits (N, c) = e W_ID, labels (N,) identities in 0..c-1. ``batch_size``
    is the global batch size when these rows are one process's share.
    """
    if batch_size is None:
        return F.cross_entropy(logits, labels)
    return F.cross_entropy(logits, labels, reduction="sum") / batch_size


def commonality(logits: torch.Tensor) -> torch.Tensor:
    """Eq. 11: C(f) = -sum_i p_i log p_i / log c, with p = softmax(f W_ID).

    logits (N, c) -> (N,) in [0, 1]: 1 when the identity scores are uniform
    (a part many people share), 0 when one identity takes all. Taken without
    gradient: it sets a margin, it is not itself optimised.
    """
    with torch.no_grad():
        log_p = F.log_softmax(logits.float(), dim=-1)
        entropy = -(log_p.exp() * log_p).sum(dim=-1)
        return entropy / math.log(logits.shape[-1])


def margin_ranking_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    labels: torch.Tensor,
    image_margin: torch.Tensor | float,
    text_margin: torch.Tensor | float,
    batch: GlobalBatch | None = None,
    negatives: str = "hardest",
) -> torch.Tensor:
    """Bidirectional hardest-negative triplet loss, summed over the batch.

    image, text (N, d): pair k is (image[k], text[k]). The hardest negative of
    an anchor is the most similar item of the other modality with a different
    identity: pairs of the same person are never negatives. An anchor with no
    negative in the batch contributes 0. Margins are scalars (Eq. 9) or (N,)
    per-anchor tensors (Eq. 12). With ``batch``, the rows here are anchors
    ``batch.start:batch.start + N`` of the global batch, and negatives are
    mined over all of it.

    ``negatives="all"`` is the warm-up form (not in the paper; VSE-infinity's
    ``vse_mean_warmup``): each anchor's hinge averaged over all its negatives
    instead of taken at the hardest one. Its gradient reaches every negative,
    so it has no stationary point where all embeddings are equal.
    """
    image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    if batch is None:
        image_sims = text_sims = image @ text.T  # (N, N): s(v_i, t_j)
        positive = image_sims.diagonal()
        image_negative = text_negative = labels.unsqueeze(1) == labels.unsqueeze(0)  # same person
    else:
        all_image, all_text = F.normalize(batch.image, dim=-1), F.normalize(batch.text, dim=-1)
        image_sims = image @ all_text.T  # (n, N): local image anchors vs every caption
        text_sims = all_image @ text.T  # (N, n): every image vs local caption anchors
        rows = torch.arange(len(image), device=image.device)
        positive = image_sims[rows, batch.start + rows]
        image_negative = labels.unsqueeze(1) == batch.labels.unsqueeze(0)
        text_negative = batch.labels.unsqueeze(1) == labels.unsqueeze(0)
    if negatives == "all":
        return (_mean_hinge(image_margin, positive, image_sims, image_negative, dim=1)
                + _mean_hinge(text_margin, positive, text_sims, text_negative, dim=0))
    if negatives != "hardest":
        raise ValueError(f"negatives must be 'hardest' or 'all', not {negatives!r}")
    hardest_text = image_sims.masked_fill(image_negative, float("-inf")).amax(dim=1)  # s(v_k, t_h)
    hardest_image = text_sims.masked_fill(text_negative, float("-inf")).amax(dim=0)  # s(t_k, v_h)
    image_term = _hinge(image_margin - positive + hardest_text)
    text_term = _hinge(text_margin - positive + hardest_image)
    return image_term.sum() + text_term.sum()


def _mean_hinge(margin: torch.Tensor | float, positive: torch.Tensor, sims: torch.Tensor,
                same_person: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum over anchors of the mean over each anchor's negatives of [margin - s_pos + s_neg]_+.

    ``sims`` holds the anchors along the axis other than ``dim``; an anchor with no negative adds 0.
    """
    margin = torch.as_tensor(margin, dtype=sims.dtype, device=sims.device)
    if margin.dim():
        margin = margin.unsqueeze(dim)  # (N,) per anchor -> broadcast along the negatives
    positive = positive.unsqueeze(dim)
    hinges = _hinge(margin - positive + sims).masked_fill(same_person, 0.0)
    counts = (~same_person).sum(dim=dim).clamp(min=1)
    return (hinges.sum(dim=dim) / counts).sum()


def _hinge(values: torch.Tensor) -> torch.Tensor:
    """[x]_+; a -inf (no negative in the batch) becomes 0."""
    return values.clamp(min=0)


def ranking_loss(image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, margin: float,
                 batch: GlobalBatch | None = None, negatives: str = "hardest") -> torch.Tensor:
    """Eq. 9: l_R with a fixed margin alpha."""
    return margin_ranking_loss(image, text, labels, margin, margin, batch, negatives)


def cmr_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    labels: torch.Tensor,
    margin: float,
    image_logits: torch.Tensor,
    text_logits: torch.Tensor,
    batch: GlobalBatch | None = None,
    negatives: str = "hardest",
) -> torch.Tensor:
    """Eq. 12: l_CMR, the ranking loss with margin alpha (1 - C(f)) per anchor.

    ``image_logits``/``text_logits`` (N, c) are f W_ID of the same slot's
    classifier, from which Eq. 11's commonality is computed.
    """
    image_margin = margin * (1.0 - commonality(image_logits))
    text_margin = margin * (1.0 - commonality(text_logits))
    return margin_ranking_loss(image, text, labels, image_margin, text_margin, batch, negatives)


def ranking_negatives(config: LossConfig, epoch: int) -> str:
    """Which negatives Eq. 9/12 use in (0-based) ``epoch``: "all" during the warm-up, "hardest" after."""
    return "all" if epoch < config.ranking_warmup_epochs else "hardest"


def compute_losses(
    image_slots: torch.Tensor,
    text_slots: torch.Tensor,
    image_logits: torch.Tensor,
    text_logits: torch.Tensor,
    labels: torch.Tensor,
    groups: dict[str, slice],
    config: LossConfig,
    gather: Gather | None = None,
    negatives: str = "hardest",
) -> dict[str, torch.Tensor]:
    """Eq. 13's terms for a batch of N image-caption pairs.

    image_slots, text_slots (N, K, d); image_logits, text_logits (N, K, c);
    ``groups`` maps "global"/"coarse"/"fine" to slot ranges. With ``gather``
    (data parallelism) the terms are this process's share of the global
    batch's terms (module docstring). ``negatives`` is "all" during the
    ranking warm-up (:func:`ranking_negatives`).
    """
    alpha = config.margin
    batch_size: int | None = None
    slot_batches: list[GlobalBatch | None] = [None] * image_slots.shape[1]
    if gather is not None:
        all_image, start = gather(image_slots)
        all_text, _ = gather(text_slots)
        all_labels, _ = gather(labels)
        batch_size = len(all_labels)
        slot_batches = [GlobalBatch(all_image[:, k], all_text[:, k], all_labels, start)
                        for k in range(image_slots.shape[1])]

    # Eq. 8: L_ID(S_m) = l_ID(g_m) + l_ID(C_m) + l_ID(F_m), summed over slots.
    losses = {
        "id_image_loss": _sum_slots(lambda k: identity_loss(image_logits[:, k], labels, batch_size),
                                    range(image_slots.shape[1])),
        "id_text_loss": _sum_slots(lambda k: identity_loss(text_logits[:, k], labels, batch_size),
                                   range(text_slots.shape[1])),
    }

    # Eq. 9/12 sum over the batch as printed; the "mean" variant divides by the (global) batch size.
    scale = 1.0 if config.ranking_reduction == "sum" else 1.0 / (batch_size or len(labels))

    def rank(k: int) -> torch.Tensor:
        return scale * ranking_loss(image_slots[:, k], text_slots[:, k], labels, alpha, slot_batches[k], negatives)

    def cmr(k: int) -> torch.Tensor:
        return scale * cmr_loss(image_slots[:, k], text_slots[:, k], labels, alpha, image_logits[:, k],
                                text_logits[:, k], slot_batches[k], negatives)

    coarse = _slots(groups["coarse"])
    fine = _slots(groups["fine"])
    # Eq. 10: L_R = l_R(g_v, g_t) + l_R(C_v, C_t); Table 3's variant puts CMR on C.
    losses["ranking_global_loss"] = rank(0)
    if coarse:
        if config.cmr_on_coarse:
            losses["cmr_coarse_loss"] = _sum_slots(cmr, coarse)
        else:
            losses["ranking_coarse_loss"] = _sum_slots(rank, coarse)
    if fine:
        # Eq. 12 on F; Table 2's third row uses the plain ranking loss instead.
        if config.fine_loss == "cmr":
            losses["cmr_fine_loss"] = _sum_slots(cmr, fine)
        else:
            losses["ranking_fine_loss"] = _sum_slots(rank, fine)
    return losses


def token_diversity_loss(queries: list[torch.Tensor]) -> torch.Tensor:
    """Diagnostic, not in the paper: the mean pairwise cosine of each set of (T, d) token query
    vectors, summed over the sets (1 per set when every token asks the same; -1/(T-1) at best)."""
    total = queries[0].new_zeros(())
    for q in queries:
        unit = F.normalize(q, dim=-1)
        t = len(q)
        total = total + ((unit @ unit.T).sum() - t) / (t * (t - 1))
    return total


def _slots(group: slice) -> range:
    return range(group.start, group.stop)


def _sum_slots(term, slots) -> torch.Tensor:
    return torch.stack([term(k) for k in slots]).sum()
