"""Text-to-image evaluation: embed a split, rank with Eq. 14, report R@K/mAP/mINP.

With ``per_slot`` it also reports what each part of S_m contributes: R@1 of
Eq. 14 restricted to each slot and each group, and how alike the decoder's
tokens are (mean pairwise cosine of their attention maps and embeddings;
a collapsed set of tokens shows as values near 1).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from tqdm import tqdm

from tbps_runtime.metrics import retrieval_metrics
from tbps_runtime.model.tokenizer import tokenize
from tbps_train.data.pipeline import CaptionTable, ImageStore
from tbps_train.data.records import ImageRecord
from tbps_train.model import TextBasedPersonSearch, normalize_slots


@dataclass
class TokenSimilarity:
    """Running means of the per-sample pairwise cosines, by name."""

    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, name: str, rows: torch.Tensor) -> None:
        """rows (B, T, n): T vectors per sample; adds each sample's mean pairwise cosine."""
        if rows.shape[1] < 2:
            return
        values = mean_pairwise_cosine(rows)
        self.sums[name] += float(values.sum())
        self.counts[name] += len(values)

    def add_attention(self, name: str, maps: torch.Tensor, valid: torch.Tensor | None = None) -> None:
        """maps (B, T, n) attention over n positions (``valid`` (B, n) bool: real positions; None: all).

        Adds the raw maps' pairwise cosine as ``name``, the cosine of the maps
        minus the uniform map as ``name_centred`` (two near-uniform maps always
        have raw cosine ~1), and the mean entropy over log(positions) as
        ``name_entropy`` (1: uniform)."""
        self.add(name, maps)
        valid = torch.ones(maps.shape[0], maps.shape[2], dtype=torch.bool) if valid is None else valid.bool()
        counts = valid.sum(dim=1, keepdim=True).clamp(min=1)  # (B, 1)
        uniform = (valid.float() / counts).unsqueeze(1)  # (B, 1, n)
        self.add(f"{name}_centred", (maps.float() - uniform) * valid.unsqueeze(1))
        p = maps.float().clamp(min=1e-12)
        entropy = -(maps.float() * p.log() * valid.unsqueeze(1)).sum(dim=-1)  # (B, T)
        normalised = entropy / counts.float().log().clamp(min=1e-12)
        self.sums[f"{name}_entropy"] += float(normalised.mean(dim=1).sum())
        self.counts[f"{name}_entropy"] += len(normalised)

    def means(self) -> dict[str, float]:
        return {name: round(self.sums[name] / self.counts[name], 4) for name in sorted(self.sums)}


def mean_pairwise_cosine(rows: torch.Tensor) -> torch.Tensor:
    """(B, T, n) -> (B,): the mean cosine over the T(T-1)/2 pairs of rows of each sample (T >= 2)."""
    unit = F.normalize(rows.float(), dim=-1)
    gram = unit @ unit.transpose(1, 2)  # (B, T, T)
    t = rows.shape[1]
    off_diagonal = gram.sum(dim=(1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(dim=-1)
    return off_diagonal / (t * (t - 1))


@torch.no_grad()
def embed_images(model: TextBasedPersonSearch, store: ImageStore, batch_size: int = 64,
                 device: str = "cpu", progress: bool = False,
                 similarity: TokenSimilarity | None = None, bar: tqdm | None = None) -> torch.Tensor:
    """Every crop of ``store`` -> (N, K, d), each slot L2-normalised.

    With ``similarity``, adds how alike the D shared tokens' attention maps
    (B, D, r) and the coarse and fine embeddings of each crop are. ``bar``:
    a caller's bar to advance by each crop, instead of a bar of its own.
    """
    out = []
    groups = model.slot_groups()
    starts = range(0, len(store), batch_size)
    for start in starts if bar is not None else tqdm(starts, desc="embed images", disable=not progress, leave=False):
        indices = np.arange(start, min(start + batch_size, len(store)))
        embeddings = model.encode_image(store.batch(indices).to(device))
        if similarity is not None:
            similarity.add_attention("coarse_image_attention", embeddings.attention.cpu())
            similarity.add("coarse_image_embedding", embeddings.slots[:, groups["coarse"]])
            similarity.add("fine_image_embedding", embeddings.slots[:, groups["fine"]])
        out.append(normalize_slots(embeddings.slots).cpu())
        if bar is not None:
            bar.update(len(indices))
    return torch.cat(out)


@torch.no_grad()
def embed_texts(model: TextBasedPersonSearch, tokenizer: Tokenizer, texts: list[str],
                batch_size: int = 128, device: str = "cpu", progress: bool = False,
                similarity: TokenSimilarity | None = None, bar: tqdm | None = None) -> torch.Tensor:
    """Captions -> (Q, K, d), each slot L2-normalised.

    With ``similarity``, adds how alike the shared tokens' and the P text
    tokens' attention maps over the words are, and their embeddings. ``bar``:
    a caller's bar to advance by each caption, instead of a bar of its own.
    """
    out = []
    groups, d = model.slot_groups(), model.config.num_coarse
    starts = range(0, len(texts), batch_size)
    for start in starts if bar is not None else tqdm(starts, desc="embed captions", disable=not progress, leave=False):
        ids, mask = tokenize(tokenizer, texts[start:start + batch_size])
        embeddings = model.encode_text(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device))
        if similarity is not None:
            valid = torch.from_numpy(mask).bool()
            similarity.add_attention("coarse_text_attention", embeddings.attention[:, :d].cpu(), valid)
            similarity.add_attention("fine_text_attention", embeddings.attention[:, d:].cpu(), valid)
            similarity.add("coarse_text_embedding", embeddings.slots[:, groups["coarse"]])
            similarity.add("fine_text_embedding", embeddings.slots[:, groups["fine"]])
        out.append(normalize_slots(embeddings.slots).cpu())
        if bar is not None:
            bar.update(len(ids))
    return torch.cat(out)


@torch.no_grad()
def token_query_cosine(model: TextBasedPersonSearch) -> dict[str, float]:
    """How alike the decoder's learnable tokens are: the mean pairwise cosine of the tokens
    themselves and of their query vectors (W_q token + b_q, the bias shared by all tokens)."""
    out = {}
    for name, tokens in {"shared": model.shared_tokens, "text": model.text_tokens}.items():
        if len(tokens) < 2:
            continue
        out[f"{name}_tokens"] = round(float(mean_pairwise_cosine(tokens.unsqueeze(0))[0]), 4)
        out[f"{name}_queries"] = round(float(mean_pairwise_cosine(model.token_queries(tokens).unsqueeze(0))[0]), 4)
    return out


def slot_subsets(model: TextBasedPersonSearch) -> dict[str, list[int]]:
    """Named slot subsets of S_m: each slot alone, each group, and all K (Eq. 14 in full)."""
    groups = model.slot_groups()
    subsets = {"global": [0]}
    for group in ("coarse", "fine"):
        slots = list(range(groups[group].start, groups[group].stop))
        subsets.update({f"{group}_{i + 1}": [k] for i, k in enumerate(slots)})
        if slots:
            subsets[group] = slots
    subsets["all"] = list(range(model.config.num_slots))
    return subsets


def per_slot_r1(queries: torch.Tensor, gallery: torch.Tensor, subsets: dict[str, list[int]],
                query_ids: np.ndarray, gallery_ids: np.ndarray) -> dict[str, float]:
    """R@1 of Eq. 14 restricted to each subset of slots: queries (Q, K, d), gallery (N, K, d) normalised."""
    out = {}
    for name, slots in subsets.items():
        similarity = (queries[:, slots].flatten(1) @ gallery[:, slots].flatten(1).T).numpy()  # (Q, N)
        out[name] = round(float(retrieval_metrics(similarity, query_ids, gallery_ids)["r1"]), 2)
    return out


def evaluate(model: TextBasedPersonSearch, tokenizer: Tokenizer, records: list[ImageRecord],
             store: ImageStore | None = None, device: str = "cpu", progress: bool = False,
             per_slot: bool = False, query_subsets: dict[str, np.ndarray] | None = None) -> dict:
    """R@1/5/10, mAP and mINP of every caption of ``records`` against all their images.

    With ``per_slot``, adds ``per_slot`` (R@1 of each slot, group and of all
    slots), ``token_cosine`` (:class:`TokenSimilarity` means) and
    ``token_query_cosine``. ``query_subsets`` names (T,) caption rows (e.g. the
    twin split) whose own metrics (and per-slot R@1) go under ``subsets``,
    ranked against the same whole gallery. ``progress``: one bar over the
    images and captions, drawn only on a terminal.
    """
    was_training = model.training
    model.eval()
    try:
        store = store or ImageStore(records, model.config.image_size, progress=progress)
        captions = CaptionTable.from_records(records)
        similarity = TokenSimilarity() if per_slot else None
        # disable=None: tqdm draws only on a terminal (a log file gets no bar lines).
        with tqdm(total=len(store) + len(captions.texts), desc="evaluate", unit="item", leave=False,
                  disable=None if progress else True) as bar:
            gallery = embed_images(model, store, device=device, similarity=similarity, bar=bar)  # (N, K, d)
            queries = embed_texts(model, tokenizer, captions.texts, device=device, similarity=similarity,
                                  bar=bar)  # (Q, K, d)
        scores = (queries.flatten(1) @ gallery.flatten(1).T).numpy()  # Eq. 14 for every (caption, image) pair
        gallery_ids = np.array([r.person_id for r in records])
        metrics: dict = retrieval_metrics(scores, captions.person_ids, gallery_ids)
        if per_slot:
            metrics["per_slot"] = per_slot_r1(queries, gallery, slot_subsets(model), captions.person_ids,
                                              gallery_ids)
            metrics["token_cosine"] = similarity.means()
            metrics["token_query_cosine"] = token_query_cosine(model)
        subsets = {}
        for name, rows in (query_subsets or {}).items():
            if len(rows):
                subsets[name] = {**retrieval_metrics(scores[rows], captions.person_ids[rows], gallery_ids),
                                 "queries": len(rows)}
                if per_slot:
                    subsets[name]["per_slot"] = per_slot_r1(queries[torch.from_numpy(rows)], gallery,
                                                            slot_subsets(model), captions.person_ids[rows],
                                                            gallery_ids)
        if subsets:
            metrics["subsets"] = subsets
        return metrics
    finally:
        model.train(was_training)
