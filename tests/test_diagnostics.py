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
    attention = {f"{group}_attention{suffix}" for group in ("coarse_image", "coarse_text", "fine_text")
                 for suffix in ("", "_centred", "_entropy")}
    assert set(cosines) == attention | {"coarse_image_embedding", "coarse_text_embedding", "fine_image_embedding",
                                        "fine_text_embedding"}
    assert all(-1.0 <= v <= 1.0 for v in cosines.values())
    assert all(0.0 <= v <= 1.0 for k, v in cosines.items() if k.endswith("_entropy"))
    assert set(metrics["token_query_cosine"]) == {"shared_tokens", "shared_queries", "text_tokens", "text_queries"}


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


def test_centred_attention_cosine_and_entropy_by_hand():
    # Two tokens over 4 positions: near-uniform maps that tilt opposite ways. Raw cosine ~1, centred -1.
    maps = torch.tensor([[[0.3, 0.2, 0.25, 0.25], [0.2, 0.3, 0.25, 0.25]]])
    similarity = TokenSimilarity()
    similarity.add_attention("a", maps)
    means = similarity.means()
    raw = (0.3 * 0.2 * 2 + 0.25 ** 2 * 2) / (0.3 ** 2 + 0.2 ** 2 + 2 * 0.25 ** 2)
    assert means["a"] == pytest.approx(raw, abs=1e-4)
    assert means["a_centred"] == pytest.approx(-1.0, abs=1e-4)
    entropy = -(0.3 * np.log(0.3) + 0.2 * np.log(0.2) + 2 * 0.25 * np.log(0.25)) / np.log(4)
    assert means["a_entropy"] == pytest.approx(entropy, abs=1e-4)


def test_centred_attention_ignores_padding():
    # Three real words and one padding position (weight 0): uniform over 3 is the reference.
    maps = torch.tensor([[[0.5, 0.25, 0.25, 0.0], [1 / 3, 1 / 3, 1 / 3, 0.0]]])
    similarity = TokenSimilarity()
    similarity.add_attention("t", maps, torch.tensor([[True, True, True, False]]))
    means = similarity.means()
    assert means["t_entropy"] == pytest.approx((-(0.5 * np.log(0.5) + 0.5 * np.log(0.25)) / np.log(3) + 1) / 2,
                                               abs=1e-4)
    assert means["t_centred"] == pytest.approx(0.0, abs=1e-4)  # the second map is the uniform one: cosine 0


def test_token_query_cosine_reads_the_shared_query_bias(tiny_text_backbone):
    from tbps_train.evaluate import token_query_cosine

    config = dataclasses.replace(load_preset("tiny").model, num_coarse=3, token_init="orthogonal")
    model = TextBasedPersonSearch(config, copy.deepcopy(tiny_text_backbone[0]), 5)
    d = config.embed_dim
    with torch.no_grad():
        model.decoder.attention.in_proj_weight[:d] = torch.eye(d)
        model.decoder.attention.in_proj_bias[:d] = 0
    assert token_query_cosine(model)["shared_tokens"] == pytest.approx(0.0, abs=1e-5)
    assert token_query_cosine(model)["shared_queries"] == pytest.approx(0.0, abs=1e-5)
    with torch.no_grad():
        model.decoder.attention.in_proj_bias[:d] = 1e3  # a large shared bias makes every query alike
    assert token_query_cosine(model)["shared_queries"] == pytest.approx(1.0, abs=1e-3)


def test_no_query_bias_keeps_the_bias_at_zero_while_training(tiny_text_backbone):
    config = dataclasses.replace(load_preset("tiny").model, decoder_query_bias=False)
    model = TextBasedPersonSearch(config, copy.deepcopy(tiny_text_backbone[0]), 5)
    optimizer = torch.optim.Adam(model.decoder.parameters(), lr=0.1)
    features = torch.randn(3, 6, config.embed_dim)
    for _ in range(3):
        embeddings, _ = model.decoder(model.shared_tokens, features)
        optimizer.zero_grad()
        embeddings.pow(2).sum().backward()
        optimizer.step()
    d = config.embed_dim
    bias = model.decoder.attention.in_proj_bias
    assert torch.count_nonzero(bias[:d]) == 0 and torch.count_nonzero(bias[d:]) > 0


def test_token_diagnostics_train_the_tokens_apart(tiny_text_backbone, tiny_config):
    """The two labelled diagnostics outside the paper: a diversity term and a token learning rate."""
    from tbps_train.config import apply_overrides
    from tbps_train.train import build_optimizer, train_step

    config = apply_overrides(apply_overrides(tiny_config, "loss", token_diversity_weight=2.0), "train",
                             token_lr_scale=10.0)
    torch.manual_seed(0)
    model = TextBasedPersonSearch(config.model, copy.deepcopy(tiny_text_backbone[0]), 6)
    optimizer, _ = build_optimizer(model, config)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([config.train.lr * 1.0, config.train.lr,
                                                                        config.train.lr * 10])
    assert {id(p) for p in optimizer.param_groups[2]["params"]} == {id(model.shared_tokens), id(model.text_tokens)}
    pixels = torch.randn(4, 3, *config.model.image_size)
    hidden, mask = torch.randn(4, 5, 32), torch.ones(4, 5, dtype=torch.long)
    terms = train_step(model, pixels, hidden, mask, torch.tensor([0, 1, 2, 3]), config)
    queries = [model.token_queries(model.shared_tokens), model.token_queries(model.text_tokens)]
    expected = 2.0 * sum(float(mean_pairwise_cosine(q.unsqueeze(0))[0]) for q in queries)
    assert terms["token_diversity_loss"].item() == pytest.approx(expected, abs=1e-5)
