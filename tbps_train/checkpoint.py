"""The self-contained training checkpoint ``m.pt`` (DESIGN.md, "Artifacts").

Plain containers only, so ``torch.load(weights_only=True)`` reads it: format
tag and version, the run config, the text backbone's config, the tokenizer's
``tokenizer.json`` text, the state dict, the number of identities, metrics
and the per-epoch history, plus the optimiser state for ``--resume``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from tbps_runtime.atomic import atomic_write
from tbps_runtime.errors import CheckpointError, InputFileNotFoundError, OutputError, TbpsError
from tbps_train.config import LIMITS, RunConfig
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
        payload = _torch_load(path)
    except Exception as e:  # torch.load raises many types (KeyError, UnpicklingError...) for a bad file
        raise CheckpointError(f"{path} is not a tbps checkpoint ({_unreadable(path, e)})") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a tbps checkpoint (no '{FORMAT}' format tag)")
    version = payload.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= VERSION:
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
    if payload["num_identities"] < 1:
        raise CheckpointError(f"{path} has num_identities {payload['num_identities']}: the file is damaged")
    if "train_state" in payload and not _is_train_state(payload["train_state"]):
        raise CheckpointError(f"{path} has a malformed train_state (epoch, optimizer, scheduler): the file is "
                              "damaged; train again without resuming from it", code="train_state_malformed",
                              path=str(path))
    return payload


def _is_train_state(state: Any) -> bool:
    """What ``--resume`` reads: the epoch reached, and the optimiser's and scheduler's state dicts."""
    epoch, optimizer = (state.get("epoch"), state.get("optimizer")) if isinstance(state, dict) else (None, None)
    return (isinstance(epoch, int) and not isinstance(epoch, bool) and 0 <= epoch <= LIMITS["train.epochs"][1]
            and isinstance(optimizer, dict) and isinstance(optimizer.get("state"), dict)
            and isinstance(optimizer.get("param_groups"), list) and isinstance(state.get("scheduler"), dict))


def check_checkpoint_output(path: str | Path) -> None:
    """Refuse to train into ``path`` when something other than a tbps checkpoint is there (a dataset's
    annotations, an image, anybody's data): only a checkpoint is ever replaced. Reads no weights (mmap).

    Raises:
        OutputError: naming the file.
    """
    path = Path(path)
    if path.is_dir() or not path.exists() and not path.is_symlink():  # a directory: check_writable says so
        return
    try:
        payload = _torch_load(path, mmap=True)
        if isinstance(payload, dict) and payload.get("format") == FORMAT:
            return
    except Exception:  # torch.load raises many types for what is not a checkpoint
        pass
    raise OutputError(f"the output {path} exists and is not a tbps checkpoint: training would replace it; choose "
                      "another output, or move the file", code="checkpoint_output_foreign", path=str(path))


def _torch_load(path: Path, **options: Any) -> Any:
    """torch.load, weights only, without its "Detected pickle protocol" warning: a plain pickle is not
    a checkpoint, and the error that follows says so in one line."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(path, map_location="cpu", weights_only=True, **options)


def _unreadable(path: Path, error: Exception) -> str:
    """Why torch.load refused ``path``, in a few words: its own messages run to paragraphs of
    advice about weights_only that does not apply (tbps never loads arbitrary pickles)."""
    if path.stat().st_size == 0:
        return "the file is empty"
    return f"torch.load cannot read it: {type(error).__name__}"


def _first_line(error: Exception) -> str:
    """Library messages run to paragraphs; the first line says what failed."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ""


def model_from_checkpoint(payload: dict[str, Any]) -> tuple[TextBasedPersonSearch, RunConfig]:
    """Rebuild the model, weights loaded, in eval mode; needs no backbone directory.

    The config is validated, then the model it describes is built on PyTorch's meta device (no memory)
    and its parameter shapes compared with the weights the checkpoint carries: a config that lies (a huge
    image size, hidden size or identity count) is refused before anything is allocated.
    """
    try:
        config = RunConfig.from_dict(payload["config"])
        config.validate()
        with torch.device("meta"), warnings.catch_warnings():  # a shape probe: its init warnings are noise
            warnings.simplefilter("ignore")
            skeleton = TextBasedPersonSearch(config.model, text_backbone_from_config(payload["text_backbone_config"]),
                                             payload["num_identities"])
    except Exception as e:  # from_dict, transformers and torch raise many types: all mean "not buildable"
        reason = str(e) if isinstance(e, TbpsError) else f"{type(e).__name__}: {_first_line(e)}"
        raise CheckpointError(f"the checkpoint's config cannot be read ({reason}): the file is damaged or was "
                              "not written by tbps") from e
    _check_weights_fit(skeleton, payload["state_dict"])
    model = TextBasedPersonSearch(config.model, text_backbone_from_config(payload["text_backbone_config"]),
                                  payload["num_identities"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"the checkpoint's weights do not fit its own config: {e}") from e
    return model.eval(), config


def _check_weights_fit(skeleton: TextBasedPersonSearch, state_dict: dict[str, Any]) -> None:
    """The weights are the tensors, by name and shape, of the model the config describes (``skeleton``)."""
    expected = {name: tuple(tensor.shape) for name, tensor in skeleton.state_dict().items()}
    carried = {name: tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
               for name, value in state_dict.items()}
    differ = sorted(name for name in set(expected) | set(carried) if expected.get(name) != carried.get(name))
    if differ:
        name = differ[0]
        raise CheckpointError(f"the checkpoint's weights do not fit its own config: {len(differ)} tensor(s) "
                              f"differ, e.g. {name} (config: {expected.get(name, 'none')}, weights: "
                              f"{carried.get(name, 'none')}): the file is damaged or was not written by tbps")
