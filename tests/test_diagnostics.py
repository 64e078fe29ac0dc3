"""Per-slot diagnostics: R@1 of Eq. 14 restricted to slots, token similarity, decoder token init."""

import copy
import dataclasses

import numpy as np
import pytest
import torch

from tbps_runtime.metrics import retrieval_metrics
from tbps_runtime.model.tokenizer import load_tokenizer, tokenize
from tbps_train.checkpoint import load_checkpoint, model_from_checkpoint
from tbps_train.config import load_preset
from tbps_train.data.pipeline import CaptionTable, ImageStore
from tbps_train.data.readers import read_split
from tbps_train.evaluate import TokenSimilarity, embed_images, evaluate, mean_pairwise_cosine, slot_subsets
from tbps_train.model import TextBasedPersonSearch


def test_mean_pairwise_cosine_by_hand():
    rows = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]]])  # cosines 0, 1/sqrt2, 1/sqrt2
    assert mean_pairwise_cosine(rows).item() == pytest.approx(2 / 2 ** 0.5 / 3)
    same = torch.ones(2, 4, 5)
    torch.testing.assert_close(mean_pairwise_cosine(same), torch.ones(2))


def _naive_r1(model, tokenizer, records, slots):
    """Eq. 14 restricted to ``slots``: a plain loop summing per-slot cosines."""
    store = ImageStore(records, model.config.image_size, progress=False)
    captions = CaptionTable.from_records(records)
    with torch.no_grad():
        image = model.encode_image(store.batch(np.arange(len(store)))).slots  # (N, K, d) raw
        ids, mask = tokenize(tokenizer, captions.texts)
        text = model.encode_text(torch.from_numpy(ids), torch.from_numpy(mask)).slots  # (Q, K, d) raw
    scores = np.zeros((len(text), len(image)))
    for q in range(len(text)):
        for n in range(len(image)):
            scores[q, n] = sum(torch.nn.functional.cosine_similarity(text[q, k], image[n, k], dim=0).item()
                               for k in slots)
    return retrieval_metrics(scores, captions.person_ids, np.array([r.person_id for r in records]))["r1"]


def test_per_slot_r1_equals_naive_restricted_eq14(tiny_checkpoint, synth_root):
    payload = load_checkpoint(tiny_checkpoint)
    model, config = model_from_checkpoint(payload)
    tokenizer = load_tokenizer(payload["tokenizer_json"], config.model.max_text_length)
    records = read_split("cuhk-pedes", synth_root, "val")
    metrics = evaluate(model, tokenizer, records, per_slot=True)
    subsets = slot_subsets(model)
    d, p = config.model.num_coarse, config.model.num_fine
    assert list(metrics["per_slot"]) == (["global"] + [f"coarse_{i + 1}" for i in range(d)] + ["coarse"]
                                         + [f"fine_{i + 1}" for i in range(p)] + ["fine", "all"])
    assert subsets["coarse"] == list(range(1, 1 + d)) and subsets["all"] == list(range(1 + d + p))
    for name in ("global", "coarse_2", "fine", "all"):
        assert metrics["per_slot"][name] == pytest.approx(_naive_r1(model, tokenizer, records, subsets[name]),
                                                          abs=0.01), name
    assert metrics["per_slot"]["all"] == pytest.approx(metrics["r1"], abs=0.01)
    cosines = metrics["token_cosine"]
    assert set(cosines) == {"coarse_image_attention", "coarse_image_embedding", "coarse_text_attention",
                            "coarse_text_embedding", "fine_image_embedding", "fine_text_attention",
                            "fine_text_embedding"}
    assert all(-1.0 <= v <= 1.0 for v in cosines.values())


def test_collapsed_tokens_show_as_cosine_one(tiny_text_backbone, synth_root):
    """All D shared tokens equal -> identical attention maps -> the diagnostic reads 1."""
    config = dataclasses.replace(load_preset("tiny").model, num_coarse=3)
    model = TextBasedPersonSearch(config, copy.deepcopy(tiny_text_backbone[0]), 5).eval()
    with torch.no_grad():
        model.shared_tokens.copy_(model.shared_tokens[:1].expand(3, -1) * 50)
    similarity = TokenSimilarity()
    records = read_split("cuhk-pedes", synth_root, "val")
    embed_images(model, ImageStore(records, config.image_size, progress=False), similarity=similarity)
    assert similarity.means()["coarse_image_attention"] == pytest.approx(1.0, abs=1e-5)
    assert similarity.means()["coarse_image_embedding"] == pytest.approx(1.0, abs=1e-5)
    assert similarity.means()["fine_image_embedding"] < 0.999  # the stripes still differ


@pytest.mark.parametrize("init", ["normal", "orthogonal"])
def test_token_init(tiny_text_backbone, init):
    config = dataclasses.replace(load_preset("tiny").model, num_coarse=4, token_init=init, token_init_std=0.5)
    torch.manual_seed(0)
    model = TextBasedPersonSearch(config, copy.deepcopy(tiny_text_backbone[0]), 5)
    tokens = model.shared_tokens.detach()
    expected_norm = 0.5 * config.embed_dim ** 0.5
    if init == "orthogonal":
        gram = tokens @ tokens.T
        torch.testing.assert_close(gram, torch.eye(4) * expected_norm ** 2, atol=1e-4, rtol=1e-4)
    else:
        assert tokens.norm(dim=1).mean().item() == pytest.approx(expected_norm, rel=0.35)
