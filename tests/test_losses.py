"""Each loss of Sec. 3.3 on cases computed by hand."""

import math

import pytest
import torch

from tbps_train.config import LossConfig
from tbps_train.losses import (
    cmr_loss, commonality, compute_losses, identity_loss, margin_ranking_loss, ranking_loss,
)

# Two identities, unit vectors in 2-D. Cosines: s(v0,t0)=1, s(v0,t1)=0.6,
# s(v1,t0)=0, s(v1,t1)=0.8.
IMAGE = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
TEXT = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
LABELS = torch.tensor([0, 1])


def test_identity_loss_eq7():
    # Uniform scores over 2 identities: -log(1/2).
    assert identity_loss(torch.zeros(1, 2), torch.tensor([0])) == pytest.approx(math.log(2))
    # p = softmax([ln 3, 0]) = [3/4, 1/4]; label 1 -> -log(1/4).
    logits = torch.tensor([[math.log(3.0), 0.0]])
    assert identity_loss(logits, torch.tensor([1])) == pytest.approx(math.log(4))


def test_commonality_eq11():
    # Uniform over c=4: entropy log 4 / log 4 = 1.
    assert commonality(torch.zeros(1, 4)).item() == pytest.approx(1.0)
    # Half the mass on each of 2 of 4 identities: log 2 / log 4 = 0.5.
    two_way = torch.tensor([[0.0, 0.0, -1e4, -1e4]])
    assert commonality(two_way).item() == pytest.approx(0.5)
    # Almost one-hot: ~0.
    assert commonality(torch.tensor([[50.0, 0.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-6)


def test_commonality_has_no_gradient():
    logits = torch.zeros(2, 3, requires_grad=True)
    assert not commonality(logits).requires_grad


def test_ranking_loss_eq9_by_hand():
    # alpha = 0.5. Image anchors: v0: [0.5 - 1 + 0.6]+ = 0.1; v1: [0.5 - 0.8 + 0]+ = 0.
    # Text anchors: t0: hardest image v1, [0.5 - 1 + 0]+ = 0; t1: hardest v0, [0.5 - 0.8 + 0.6]+ = 0.3.
    assert ranking_loss(IMAGE, TEXT, LABELS, 0.5).item() == pytest.approx(0.4)


def test_ranking_loss_uses_cosine_not_dot_product():
    assert ranking_loss(IMAGE * 7, TEXT * 3, LABELS, 0.5).item() == pytest.approx(0.4)


def test_same_identity_is_never_a_negative():
    # Items 0 and 1 share an identity, so v0's only negative is t2 (cosine 0).
    image = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[0.8, 0.6], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([5, 5, 9])
    # v0: [0.2 - 0.8 + 0]+ = 0 (t1, cosine 1, is the same person, not a negative).
    # v1: [0.2 - 1 + 0]+ = 0. v2: hardest of t0 (0.6), t1 (0): [0.2 - 1 + 0.6]+ = 0.
    # t0: [0.2 - 0.8 + s(t0, v2)=0.6]+ = 0. t1: [0.2 - 1 + 0]+ = 0. t2: [0.2 - 1 + 0]+ = 0.
    assert ranking_loss(image, text, labels, 0.2).item() == pytest.approx(0.0)
    # With identities all different, t1 is v0's hardest negative: [0.2 - 0.8 + 1]+ = 0.4,
    # and t0's hardest image is v1 (cosine 0.8): [0.2 - 0.8 + 0.8]+ = 0.2; v2 adds 0.
    # v1: hardest text t0 (0.8): [0.2 - 1 + 0.8]+ = 0; t1: hardest v0 (1.0): [0.2 - 1 + 1]+ = 0.2.
    assert ranking_loss(image, text, torch.tensor([0, 1, 2]), 0.2).item() == pytest.approx(0.8)


def test_batch_of_one_identity_has_no_loss():
    labels = torch.tensor([3, 3])
    loss = ranking_loss(IMAGE, TEXT, labels, 0.5)
    assert loss.item() == 0.0
    assert not torch.isnan(loss)


def test_per_anchor_margins():
    # Image margins [0.5, 0], text margins [0, 0.5]: v0 gives 0.1, t1 gives 0.3, others 0.
    loss = margin_ranking_loss(IMAGE, TEXT, LABELS, torch.tensor([0.5, 0.0]), torch.tensor([0.0, 0.5]))
    assert loss.item() == pytest.approx(0.1 + 0.3)


def test_cmr_loss_eq12_margin_is_alpha_times_one_minus_commonality():
    alpha = 1.0
    # c = 4. Image 0's scores split over 2 identities (C = 0.5 -> margin 0.5); every
    # other anchor's scores are uniform (C = 1 -> margin 0).
    image_logits = torch.tensor([[0.0, 0.0, -1e4, -1e4], [0.0, 0.0, 0.0, 0.0]])
    text_logits = torch.zeros(2, 4)
    # v0: [0.5 - 1 + 0.6]+ = 0.1; v1: [0 - 0.8 + 0]+ = 0; t0: [0 - 1 + 0]+ = 0; t1: [0 - 0.8 + 0.6]+ = 0.
    loss = cmr_loss(IMAGE, TEXT, LABELS, alpha, image_logits, text_logits)
    assert loss.item() == pytest.approx(0.1)
    # Confident classifiers (C ~ 0) give back the plain ranking loss of Eq. 9.
    confident = torch.tensor([[60.0, 0.0, 0.0, 0.0], [0.0, 60.0, 0.0, 0.0]])
    assert cmr_loss(IMAGE, TEXT, LABELS, 0.5, confident, confident).item() == pytest.approx(0.4, abs=1e-5)


def _slots(*vectors):
    return torch.stack([torch.tensor(v) for v in vectors], dim=1)  # (N, K, d)


def test_total_loss_eq13_terms():
    # K = 3 slots (g, one coarse, one fine); the same geometry in every slot.
    image = _slots(IMAGE.tolist(), IMAGE.tolist(), IMAGE.tolist())
    text = _slots(TEXT.tolist(), TEXT.tolist(), TEXT.tolist())
    logits = torch.zeros(2, 3, 2)  # uniform over c = 2: each l_ID = log 2, each C = 1
    groups = {"global": slice(0, 1), "coarse": slice(1, 2), "fine": slice(2, 3)}
    summed = LossConfig(margin=0.5, ranking_reduction="sum")
    terms = compute_losses(image, text, logits, logits, LABELS, groups, summed)
    assert terms["id_image_loss"].item() == pytest.approx(3 * math.log(2))  # Eq. 8 over 3 slots
    assert terms["id_text_loss"].item() == pytest.approx(3 * math.log(2))
    assert terms["ranking_global_loss"].item() == pytest.approx(0.4)  # Eq. 10, g
    assert terms["ranking_coarse_loss"].item() == pytest.approx(0.4)  # Eq. 10, C
    assert terms["cmr_fine_loss"].item() == pytest.approx(0.0)  # Eq. 12 with C = 1: margin 0
    plain = compute_losses(image, text, logits, logits, LABELS, groups,
                           LossConfig(margin=0.5, fine_loss="ranking", ranking_reduction="sum"))
    assert plain["ranking_fine_loss"].item() == pytest.approx(0.4)
    on_coarse = compute_losses(image, text, logits, logits, LABELS, groups, LossConfig(margin=0.5, cmr_on_coarse=True))
    assert on_coarse["cmr_coarse_loss"].item() == pytest.approx(0.0)
    assert "ranking_coarse_loss" not in on_coarse


def test_global_only_has_no_coarse_or_fine_terms():
    image, text = IMAGE.unsqueeze(1), TEXT.unsqueeze(1)
    groups = {"global": slice(0, 1), "coarse": slice(1, 1), "fine": slice(1, 1)}
    terms = compute_losses(image, text, torch.zeros(2, 1, 2), torch.zeros(2, 1, 2), LABELS, groups, LossConfig(margin=0.5))
    assert set(terms) == {"id_image_loss", "id_text_loss", "ranking_global_loss"}


def test_default_reduction_averages_every_term_over_the_batch():
    # Same case as above: Eq. 9 summed over N = 2 anchors is 0.4, so its batch mean is 0.2,
    # while Eq. 7 is a batch mean under both reductions.
    image = _slots(IMAGE.tolist(), IMAGE.tolist(), IMAGE.tolist())
    text = _slots(TEXT.tolist(), TEXT.tolist(), TEXT.tolist())
    logits = torch.zeros(2, 3, 2)
    groups = {"global": slice(0, 1), "coarse": slice(1, 2), "fine": slice(2, 3)}
    assert LossConfig().ranking_reduction == "mean"
    terms = compute_losses(image, text, logits, logits, LABELS, groups, LossConfig(margin=0.5, fine_loss="ranking"))
    assert terms["ranking_global_loss"].item() == pytest.approx(0.2)
    assert terms["ranking_coarse_loss"].item() == pytest.approx(0.2)
    assert terms["ranking_fine_loss"].item() == pytest.approx(0.2)
    assert terms["id_image_loss"].item() == pytest.approx(3 * math.log(2))


def test_unknown_reduction_is_refused():
    from tbps_runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="ranking_reduction"):
        LossConfig(ranking_reduction="max").validate()


# Three people; cosines s(v_i, t_j): v0 -> (0.8, 1, 0), v1 -> (0.8, 1, 0), v2 -> (0.6, 0, 1).
THREE_IMAGE = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
THREE_TEXT = torch.tensor([[0.8, 0.6], [1.0, 0.0], [0.0, 1.0]])
THREE_LABELS = torch.tensor([0, 1, 2])


def test_warmup_hinge_is_averaged_over_all_negatives_by_hand():
    # alpha 0.2. Image anchors: v0 over t1, t2: ([0.2 - 0.8 + 1]+ + [0.2 - 0.8 + 0]+) / 2 = 0.2; v1, v2: 0.
    # Text anchors: t0 over v1, v2: ([0.2 - 0.8 + 0.8]+ + [0.2 - 0.8 + 0.6]+) / 2 = 0.1;
    # t1 over v0, v2: ([0.2 - 1 + 1]+ + 0) / 2 = 0.1; t2: 0. Total 0.4.
    loss = ranking_loss(THREE_IMAGE, THREE_TEXT, THREE_LABELS, 0.2, negatives="all")
    assert loss.item() == pytest.approx(0.4)
    # The hardest negatives of the same batch: v0 0.4, t0 0.2, t1 0.2.
    assert ranking_loss(THREE_IMAGE, THREE_TEXT, THREE_LABELS, 0.2).item() == pytest.approx(0.8)


def test_warmup_hinge_skips_the_same_person_and_takes_per_anchor_margins():
    # v0 and v1 are one person: v0's only negative is t2 (cosine 0): [m - 0.8 + 0]+ = 0 for m <= 0.8.
    # With image margins (1.0, 0, 0): v0 gives [1 - 0.8 + 0]+ = 0.2; text margins 0 leave t0: [0 - 0.8 + 0.6]+ = 0.
    loss = margin_ranking_loss(THREE_IMAGE, THREE_TEXT, torch.tensor([4, 4, 9]), torch.tensor([1.0, 0.0, 0.0]),
                               torch.zeros(3), negatives="all")
    assert loss.item() == pytest.approx(0.2)


def test_warmup_has_gradient_where_the_hardest_negative_has_none():
    # Every embedding equal: each hardest hinge is alpha and the max gives no useful direction;
    # averaged over negatives the loss still pushes (its gradient is not zero).
    image = torch.ones(4, 3, requires_grad=True)
    text = (torch.ones(4, 3) + 0.01 * torch.randn(4, 3)).requires_grad_()
    ranking_loss(image, text, torch.arange(4), 0.2, negatives="all").backward()
    assert text.grad.abs().sum() > 0


def test_unknown_negatives_are_refused():
    with pytest.raises(ValueError, match="negatives"):
        ranking_loss(IMAGE, TEXT, LABELS, 0.2, negatives="semi-hard")


def test_ranking_warmup_switches_at_its_epoch():
    from tbps_train.losses import ranking_negatives

    config = LossConfig(ranking_warmup_epochs=2)
    assert [ranking_negatives(config, epoch) for epoch in range(4)] == ["all", "all", "hardest", "hardest"]
    assert ranking_negatives(LossConfig(), 0) == "hardest"


def test_compute_losses_passes_the_negatives_to_every_ranking_term():
    image = torch.stack([THREE_IMAGE] * 3, dim=1)  # (3, K=3, 2)
    text = torch.stack([THREE_TEXT] * 3, dim=1)
    logits = torch.zeros(3, 3, 3)  # commonality 1: CMR margins 0
    groups = {"global": slice(0, 1), "coarse": slice(1, 2), "fine": slice(2, 3)}
    config = LossConfig(margin=0.2, fine_loss="ranking", ranking_reduction="sum")
    warm = compute_losses(image, text, logits, logits, THREE_LABELS, groups, config, negatives="all")
    hard = compute_losses(image, text, logits, logits, THREE_LABELS, groups, config)
    for name in ("ranking_global_loss", "ranking_coarse_loss", "ranking_fine_loss"):
        assert warm[name].item() == pytest.approx(0.4) and hard[name].item() == pytest.approx(0.8)


def test_token_diversity_loss_by_hand():
    from tbps_train.losses import token_diversity_loss

    same = torch.ones(3, 4)
    assert token_diversity_loss([same]).item() == pytest.approx(1.0)
    orthogonal = torch.eye(3)
    assert token_diversity_loss([orthogonal]).item() == pytest.approx(0.0, abs=1e-6)
    # Two sets add: cosines (1, 0) -> mean 0.5 for [[1,0],[1,1]]/... : rows (1,0), (0,1), (1,1)/sqrt2.
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    expected = (0 + 2 ** -0.5 + 2 ** -0.5) / 3
    assert token_diversity_loss([rows, same]).item() == pytest.approx(expected + 1.0, abs=1e-6)
