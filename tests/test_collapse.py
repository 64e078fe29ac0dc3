"""Collapse of the ranking loss: detected on hand-built batches and recorded while training."""

import pytest
import torch

from tbps_train.collapse import CollapseMonitor, collapsed_slots, is_collapsed, slot_health, slot_names, spread


def test_a_collapsed_batch_is_detected():
    # Every embedding equal: every hardest negative equals its positive, so each of the 2N hinges is alpha.
    same = torch.ones(8, 4)
    labels = torch.arange(8)
    health = slot_health(same, same * 3, labels, margin=0.2)
    assert health == pytest.approx({"active_hinges": 1.0, "loss_ratio": 1.0, "spread_image": 0.0,
                                    "spread_text": 0.0}, abs=1e-6)
    assert is_collapsed(health)


def test_a_separated_batch_is_not_collapsed():
    # One orthogonal direction per person, text = image: positive 1, negatives 0, hinges [0.2 - 1]+ = 0.
    eye = torch.eye(6)
    health = slot_health(eye, eye, torch.arange(6), margin=0.2)
    assert health == pytest.approx({"active_hinges": 0.0, "loss_ratio": 0.0, "spread_image": 1.0,
                                    "spread_text": 1.0}, abs=1e-6)
    assert not is_collapsed(health)


def test_high_loss_alone_is_not_collapse():
    # Spread-out embeddings whose captions point elsewhere: hinges large, but the slot is not one vector.
    image = torch.eye(4)
    text = torch.roll(torch.eye(4), 1, dims=0)  # t_k = v_{k-1}: every positive 0, a negative at 1
    health = slot_health(image, text, torch.arange(4), margin=0.2)
    assert health["loss_ratio"] == pytest.approx(6.0)  # (0.2 - 0 + 1) / 0.2
    assert not is_collapsed(health)


def test_spread_ignores_pairs_of_the_same_person():
    # Two people, two images each; within a person identical, across persons orthogonal.
    embeddings = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert spread(embeddings, torch.tensor([0, 0, 1, 1])).item() == pytest.approx(1.0)
    assert torch.isnan(spread(embeddings, torch.tensor([3, 3, 3, 3])))


def test_monitor_averages_over_steps_and_names_the_collapsed_slots():
    groups = {"global": slice(0, 1), "coarse": slice(1, 3), "fine": slice(3, 3)}
    names = slot_names(groups)
    assert names == ["global", "coarse_1", "coarse_2"]
    monitor = CollapseMonitor(names, margin=0.2)
    labels = torch.arange(4)
    healthy = torch.eye(4)
    for _ in range(2):
        image = torch.stack([healthy, torch.ones(4, 4), healthy], dim=1)  # (N, K, d): coarse_1 collapsed
        monitor.add(image, image.clone(), labels)
    summary = monitor.epoch_summary()
    assert collapsed_slots(summary) == ["coarse_1"]
    assert summary["coarse_1"]["loss_ratio"] == pytest.approx(1.0)
    assert monitor.steps == 0 and not monitor.sums  # reset for the next epoch


def test_training_records_negatives_and_health_per_epoch(tmp_path, synth_root, tiny_config, caplog):
    from tbps_train.config import apply_overrides
    from tbps_train.train import train

    config = apply_overrides(apply_overrides(tiny_config, "train", epochs=3), "loss", ranking_reduction="sum",
                             ranking_warmup_epochs=2)
    train(config, "cuhk-pedes", synth_root, tmp_path / "m.pt", progress=False, threads=1)
    history = torch.load(tmp_path / "m.pt", weights_only=True)["history"]
    assert [r["ranking_negatives"] for r in history] == ["all", "all", "hardest"]
    for record in history:
        assert set(record["health"]) == {"global", "coarse_1", "coarse_2", "fine_1", "fine_2"}
        assert record["collapsed"] == collapsed_slots(record["health"])
    assert torch.load(tmp_path / "m.pt", weights_only=True)["config"]["loss"]["ranking_warmup_epochs"] == 2
