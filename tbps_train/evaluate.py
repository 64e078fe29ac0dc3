"""Text-to-image evaluation: embed a split, rank with Eq. 14, report R@K/mAP/mINP."""

from __future__ import annotations

import numpy as np
import torch
from tokenizers import Tokenizer
from tqdm import tqdm

from tbps_runtime.metrics import retrieval_metrics
from tbps_runtime.tokenizer import tokenize
from tbps_train.data.pipeline import CaptionTable, ImageStore
from tbps_train.data.records import ImageRecord
from tbps_train.model import TextBasedPersonSearch, normalize_slots


@torch.no_grad()
def embed_images(model: TextBasedPersonSearch, store: ImageStore, batch_size: int = 64,
                 device: str = "cpu", progress: bool = False) -> torch.Tensor:
    """Every crop of ``store`` -> (N, K, d), each slot L2-normalised."""
    out = []
    for start in tqdm(range(0, len(store), batch_size), desc="embed images", disable=not progress, leave=False):
        indices = np.arange(start, min(start + batch_size, len(store)))
        out.append(normalize_slots(model.encode_image(store.batch(indices).to(device)).slots).cpu())
    return torch.cat(out)


@torch.no_grad()
def embed_texts(model: TextBasedPersonSearch, tokenizer: Tokenizer, texts: list[str],
                batch_size: int = 128, device: str = "cpu", progress: bool = False) -> torch.Tensor:
    """Captions -> (Q, K, d), each slot L2-normalised."""
    out = []
    for start in tqdm(range(0, len(texts), batch_size), desc="embed captions", disable=not progress, leave=False):
        ids, mask = tokenize(tokenizer, texts[start:start + batch_size])
        embeddings = model.encode_text(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device))
        out.append(normalize_slots(embeddings.slots).cpu())
    return torch.cat(out)


def evaluate(model: TextBasedPersonSearch, tokenizer: Tokenizer, records: list[ImageRecord],
             store: ImageStore | None = None, device: str = "cpu", progress: bool = False) -> dict[str, float]:
    """R@1/5/10, mAP and mINP of every caption of ``records`` against all their images."""
    was_training = model.training
    model.eval()
    try:
        store = store or ImageStore(records, model.config.image_size, progress=progress)
        captions = CaptionTable.from_records(records)
        gallery = embed_images(model, store, device=device, progress=progress).flatten(1)  # (N, K*d)
        queries = embed_texts(model, tokenizer, captions.texts, device=device, progress=progress).flatten(1)
        similarity = (queries @ gallery.T).numpy()  # Eq. 14 for every (caption, image) pair
        gallery_ids = np.array([r.person_id for r in records])
        return retrieval_metrics(similarity, captions.person_ids, gallery_ids)
    finally:
        model.train(was_training)
