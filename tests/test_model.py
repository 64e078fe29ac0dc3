"""The model of Sec. 3: shapes, Eq. 5 and Eq. 14, masking, gradient flow, ablations."""

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from tbps_runtime.errors import ConfigError
from tbps_train.config import load_preset
from tbps_train.losses import compute_losses
from tbps_train.model import TextBasedPersonSearch, similarity

TINY = load_preset("tiny")


def make_model(backbone, num_identities=5, **changes):
    torch.manual_seed(0)
    config = dataclasses.replace(TINY.model, **changes)
    return TextBasedPersonSearch(config, copy.deepcopy(backbone[0]), num_identities)


def text_batch():
    ids = torch.tensor([[101, 1037, 2158, 1999, 2417, 102, 0, 0], [101, 1037, 2450, 4147, 1037, 2200, 2146, 102]])
    return ids, (ids != 0).long()


def test_shapes_full_model(tiny_text_backbone):
    model = make_model(tiny_text_backbone).eval()
    image = model.encode_image(torch.randn(3, 3, 64, 32))
    text = model.encode_text(*text_batch())
    cfg = TINY.model
    k = 1 + cfg.num_coarse + cfg.num_fine
    assert image.slots.shape == (3, k, cfg.embed_dim)
    assert text.slots.shape == (2, k, cfg.embed_dim)
    h, w = model.feature_hw
    assert image.attention.shape == (3, cfg.num_coarse, h * w)
    assert text.attention.shape == (2, cfg.num_coarse + cfg.num_fine, 8)
    # Softmax attention: each token's weights sum to 1; padding gets none.
    torch.testing.assert_close(image.attention.sum(-1), torch.ones(3, cfg.num_coarse))
    assert text.attention[0, :, 6:].abs().max() == 0


@pytest.mark.parametrize("changes, k", [
    ({"use_coarse": False, "use_fine": False}, 1),
    ({"use_fine": False}, 1 + TINY.model.num_coarse),
    ({"use_coarse": False}, 1 + TINY.model.num_fine),
    ({"shared_decoder": False}, 1 + TINY.model.num_coarse + TINY.model.num_fine),
])
def test_ablations_change_k(tiny_text_backbone, changes, k):
    model = make_model(tiny_text_backbone, **changes).eval()
    assert model.config.num_slots == k
    assert model.encode_image(torch.randn(2, 3, 64, 32)).slots.shape[1] == k
    assert model.encode_text(*text_batch()).slots.shape[1] == k
    assert len(model.id_classifiers) == k


def test_eq14_equals_naive_sum_of_cosines(tiny_text_backbone):
    model = make_model(tiny_text_backbone).eval()
    with torch.no_grad():
        image = model.encode_image(torch.randn(3, 3, 64, 32)).slots
        text = model.encode_text(*text_batch()).slots
    fast = similarity(image, text)  # (Q, N)
    naive = torch.zeros(2, 3)
    for q in range(2):
        for n in range(3):
            naive[q, n] = sum(F.cosine_similarity(image[n, k], text[q, k], dim=0) for k in range(image.shape[1]))
    torch.testing.assert_close(fast, naive, atol=1e-5, rtol=1e-5)


def test_padding_does_not_change_text_embeddings(tiny_text_backbone):
    model = make_model(tiny_text_backbone).eval()
    ids, mask = text_batch()
    with torch.no_grad():
        alone = model.encode_text(ids[:1, :6], mask[:1, :6]).slots
        padded = model.encode_text(ids, mask).slots[:1]
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-5)


def test_global_text_embedding_ignores_padding(tiny_text_backbone):
    model = make_model(tiny_text_backbone).eval()
    hidden = torch.randn(1, 4, model.text_projection.in_features)
    mask = torch.tensor([[1, 1, 0, 0]])
    hidden_big_pad = hidden.clone()
    hidden_big_pad[:, 2:] = 1e3  # padding positions must not win the max
    with torch.no_grad():
        a = model.encode_text_features(hidden, mask).slots[:, 0]
        b = model.encode_text_features(hidden_big_pad, mask).slots[:, 0]
        expected = model.text_projection(hidden[:, :2]).amax(dim=1)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, expected)


def test_eq5_fine_embeddings_by_hand(tiny_text_backbone):
    model = make_model(tiny_text_backbone).eval()
    h, w = model.feature_hw  # 4 x 2, cut into P = 2 stripes of 2 rows
    encoded = torch.randn(1, h * w, TINY.model.embed_dim)
    weights = torch.rand(1, TINY.model.num_coarse, h * w)
    fine = model._image_fine(encoded, weights)
    a_avg = weights.mean(dim=1)
    a_avg = a_avg / a_avg.max()
    emphasised = encoded + a_avg.unsqueeze(-1) * encoded
    rows = h // 2 * w
    expected = torch.stack([emphasised[0, :rows].amax(0), emphasised[0, rows:].amax(0)])
    torch.testing.assert_close(fine[0], expected)


def test_eq5_raw_form_switch(tiny_text_backbone):
    model = make_model(tiny_text_backbone, foreground_scaling="raw").eval()
    encoded = torch.ones(1, 8, TINY.model.embed_dim)
    weights = torch.full((1, TINY.model.num_coarse, 8), 1 / 8)
    # Raw A_avg = 1/8 everywhere: M.. = M~ * (1 + 1/8).
    torch.testing.assert_close(model._image_fine(encoded, weights), torch.full((1, 2, TINY.model.embed_dim), 1.125))


def test_gradients_reach_everything_but_the_text_backbone(tiny_text_backbone):
    model = make_model(tiny_text_backbone).train()
    image = model.encode_image(torch.randn(4, 3, 64, 32))
    ids = torch.randint(1000, 3000, (4, 6))
    text = model.encode_text(ids, torch.ones_like(ids))
    labels = torch.tensor([0, 1, 2, 3])
    terms = compute_losses(image.slots, text.slots, model.identity_logits(image.slots),
                           model.identity_logits(text.slots), labels, model.slot_groups(), TINY.loss)
    sum(terms.values()).backward()
    for name, parameter in model.named_parameters():
        if name.startswith("text_backbone."):
            assert not parameter.requires_grad and parameter.grad is None, name
        else:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert not model.text_backbone.training  # frozen: dropout stays off in train mode


def test_shared_decoder_serves_both_modalities(tiny_text_backbone):
    shared = make_model(tiny_text_backbone)
    separate = make_model(tiny_text_backbone, shared_decoder=False)
    assert not hasattr(shared, "text_decoder")
    extra = sum(p.numel() for p in separate.parameters()) - sum(p.numel() for p in shared.parameters())
    d = TINY.model.embed_dim
    assert extra == 4 * d * d + 4 * d + TINY.model.num_coarse * d  # one more MHA + its tokens


def test_stripes_must_divide_the_feature_map(tiny_text_backbone):
    with pytest.raises(ConfigError, match="equal stripes"):
        make_model(tiny_text_backbone, num_fine=3)


@pytest.mark.parametrize("image_backbone", ["resnet50", "vit_b_16"])
def test_paper_preset_model(tiny_text_backbone, image_backbone):
    config = dataclasses.replace(load_preset("paper").model, image_backbone=image_backbone, text_backbone="tiny")
    model = TextBasedPersonSearch(config, copy.deepcopy(tiny_text_backbone[0]), num_identities=11003).eval()
    assert model.feature_hw == (24, 8)  # Sec. 4.1: 384x128 input; r = 192 positions, P = 4 stripes of 6 rows
    with torch.no_grad():
        slots = model.encode_image(torch.randn(1, 3, 384, 128)).slots
    assert slots.shape == (1, 9, 512)
