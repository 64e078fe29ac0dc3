"""Training from cached image features: the same loss as the full model with a frozen backbone."""

import numpy as np
import pytest
import torch

from tbps_train.config import apply_overrides
from tbps_train.data.pipeline import CaptionTable, ImageStore, flip_horizontally
from tbps_train.data.readers import read_split
from tbps_train.losses import compute_losses
from tbps_train.model import TextBasedPersonSearch
from tbps_train.train import ImageFeatureCache, TrainingPass


@pytest.fixture()
def model_and_store(tiny_text_backbone, synth_root, tiny_config):
    import copy

    torch.manual_seed(0)
    model = TextBasedPersonSearch(tiny_config.model, copy.deepcopy(tiny_text_backbone[0]), 24)
    records = read_split("cuhk-pedes", synth_root, "train")
    return model, ImageStore(records, tiny_config.model.image_size, progress=False), records


def test_cached_maps_are_the_backbone_of_each_image_and_its_mirror(model_and_store):
    model, store, _ = model_and_store
    cache = ImageFeatureCache(model, store, batch_size=7, progress=False)
    images = np.array([0, 5, 3])
    flips = torch.tensor([False, True, True])
    model.image_backbone.eval()
    with torch.no_grad():
        expected = model.image_backbone(flip_horizontally(store.batch(images), flips))
    torch.testing.assert_close(cache.batch(images, flips), expected, atol=1e-5, rtol=1e-5)


def test_cached_path_gives_the_full_models_loss_with_a_frozen_backbone(model_and_store, tiny_config):
    model, store, records = model_and_store
    cache = ImageFeatureCache(model, store, progress=False)
    captions = CaptionTable.from_records(records)
    rows = np.arange(12)
    images = captions.image_index[rows]
    flips = torch.tensor([i % 3 == 0 for i in range(12)])
    labels = torch.as_tensor(captions.person_ids[rows] % 24)
    ids = torch.randint(1, 100, (12, 9))
    mask = torch.ones(12, 9, dtype=torch.long)
    hidden = model.text_features(ids, mask)
    model.train()
    model.image_backbone.eval()  # frozen: BatchNorm uses its running statistics in both paths
    groups = model.slot_groups()

    def loss(forward, image_input):
        terms = compute_losses(*forward(image_input, hidden, mask), labels, groups, tiny_config.loss)
        return sum(v for k, v in terms.items() if k.endswith("_loss"))

    full = loss(TrainingPass(model), flip_horizontally(store.batch(images), flips))
    cached = loss(TrainingPass(model, from_image_features=True), cache.batch(images, flips))
    assert cached.item() == pytest.approx(full.item(), rel=1e-5)


def test_training_from_cached_features_leaves_the_backbone_as_it_was(tmp_path, synth_root, tiny_config):
    from tbps_train.train import train

    config = apply_overrides(tiny_config, "train", epochs=2, cache_image_features=True)
    path = tmp_path / "m.pt"
    train(config, "cuhk-pedes", synth_root, path, progress=False, threads=1)
    trained = torch.load(path, weights_only=True)
    reference = tmp_path / "ref.pt"
    train(apply_overrides(config, "train", epochs=1), "cuhk-pedes", synth_root, reference, progress=False,
          threads=1)
    first = torch.load(reference, weights_only=True)
    state, start = trained["state_dict"], first["state_dict"]
    backbone = [k for k in state if k.startswith("image_backbone.")]
    assert backbone and all(torch.equal(state[k], start[k]) for k in backbone)
    assert not torch.equal(state["shared_tokens"], start["shared_tokens"])  # the rest trains
    assert trained["config"]["train"]["cache_image_features"] is True
