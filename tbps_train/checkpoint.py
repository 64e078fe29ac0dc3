"""The self-contained training checkpoint ``m.pt`` (DESIGN.md, "Artifacts").

Plain containers only, so ``torch.load(weights_only=True)`` reads it: format
tag and version, the run config, the text backbone's config, the tokenizer's
``tokenizer.json`` text, the state dict, the number of identities, metrics
and the per-epoch history, plus the optimiser state for ``--resume``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from tbps_runtime.atomic import atomic_write
from tbps_runtime.errors import CheckpointError, InputFileNotFoundError, TbpsError
from tbps_train.config import RunConfig
from tbps_train.model import TextBasedPersonSearch
from tbps_train.text import text_backbone_config, text_backbone_from_config

logger = logging.getLogger(__name__)

FORMAT = "tbps-checkpoint"
VERSION = 1
_REQUIRED = ("config", "text_backbone_config", "tokenizer_json", "state_dict", "num_identities")
_TYPES = {"config": dict, "text_backbone_config": dict, "tokenizer_json": str, "state_dict": dict,
          "num_identities": int}


def checkpoint_payload(
    model: TextBasedPersonSearch,
    config: RunConfig,
    tokenizer_json: str,
    num_identities: int,
    **extra: Any,
) -> dict[str, Any]:
    """The checkpoint dictionary; ``extra`` adds metrics, history, train_state, dataset."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": config.to_dict(),
        "text_backbone_config": text_backbone_config(model.text_backbone),
        "tokenizer_json": tokenizer_json,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "num_identities": int(num_identities),
        **extra,
    }


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write atomically: a temp file in the same directory, then rename."""
    atomic_write(path, lambda stream: torch.save(payload, stream))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and check a checkpoint; anything else gets one clear CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise InputFileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many types (KeyError, UnpicklingError...) for a bad file
        raise CheckpointError(
            f"{path} is not a tbps checkpoint (torch.load failed: {type(e).__name__}: {_first_line(e)})"
        ) from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a tbps checkpoint (no '{FORMAT}' format tag)")
    version = payload.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}; this tbps reads up to {VERSION}: upgrade tbps"
        )
    missing = [key for key in _REQUIRED if key not in payload]
    if missing:
        raise CheckpointError(f"{path} is missing {', '.join(missing)}: the file is damaged")
    mistyped = [f"{key} (a {type(payload[key]).__name__}, expected a {kind.__name__})"
                for key, kind in _TYPES.items() if not isinstance(payload[key], kind) or isinstance(payload[key], bool)]
    if mistyped:
        raise CheckpointError(f"{path} mistypes {', '.join(mistyped)}: the file is damaged or was not written by tbps")
    return payload


def _first_line(error: Exception) -> str:
    """torch.load's messages run to paragraphs; the first line says what failed."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ""


def model_from_checkpoint(payload: dict[str, Any]) -> tuple[TextBasedPersonSearch, RunConfig]:
    """Rebuild the model, weights loaded, in eval mode; needs no backbone directory."""
    try:
        config = RunConfig.from_dict(payload["config"])
        text_backbone = text_backbone_from_config(payload["text_backbone_config"])
    except (TypeError, KeyError, ValueError, AttributeError) as e:
        if isinstance(e, TbpsError):
            raise
        raise CheckpointError(f"the checkpoint's config cannot be read ({type(e).__name__}: {e}): "
                              "the file is damaged or was not written by tbps") from e
    model = TextBasedPersonSearch(config.model, text_backbone, payload["num_identities"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"the checkpoint's weights do not fit its own config: {e}") from e
    return model.eval(), config
