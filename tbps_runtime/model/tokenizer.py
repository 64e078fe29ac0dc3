"""Caption tokenizing with Hugging Face ``tokenizers`` (shared by training and the runtime)."""

from __future__ import annotations

import logging

import numpy as np
from tokenizers import Tokenizer

from tbps_runtime.errors import ConfigError

logger = logging.getLogger(__name__)


def load_tokenizer(tokenizer_json: str, max_length: int) -> Tokenizer:
    """A tokenizer from ``tokenizer.json`` text that truncates to ``max_length``
    tokens and pads right to the longest caption of each batch."""
    try:
        tokenizer = Tokenizer.from_str(tokenizer_json)
    except Exception as e:  # tokenizers raises a bare Exception on bad JSON
        raise ConfigError(f"cannot read tokenizer.json: {e}") from e
    pad_id, pad_token = _pad_token(tokenizer)
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(direction="right", pad_id=pad_id, pad_token=pad_token)
    return tokenizer


def tokenize(tokenizer: Tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``input_ids`` and ``attention_mask``, both (B, L) int64, L = longest in the batch."""
    if not texts:
        return np.zeros((0, 0), np.int64), np.zeros((0, 0), np.int64)
    encodings = tokenizer.encode_batch(list(texts))
    truncated = sum(1 for e in encodings if e.overflowing)
    if truncated:
        limit = tokenizer.truncation["max_length"]
        logger.warning("%d caption(s) longer than %d tokens were truncated: the model reads only their "
                       "first %d tokens", truncated, limit, limit)
    input_ids = np.array([e.ids for e in encodings], dtype=np.int64)
    attention_mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    return input_ids, attention_mask


def _pad_token(tokenizer: Tokenizer) -> tuple[int, str]:
    """The pad token the file declares, else BERT's ``[PAD]``."""
    if tokenizer.padding is not None:
        return tokenizer.padding["pad_id"], tokenizer.padding["pad_token"]
    pad_id = tokenizer.token_to_id("[PAD]")
    if pad_id is None:
        raise ConfigError("tokenizer.json declares no padding and has no [PAD] token")
    return pad_id, "[PAD]"
