"""Training (paper Sec. 4.1): Adam, step decay, image backbone at a lower rate, text backbone frozen."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from tbps_runtime.errors import CheckpointError, ConfigError, DataError, OutputError
from tbps_runtime.machine import cpu_model
from tbps_runtime.threads import AdaptiveThreads, ThreadChoice, choose_threads
from tbps_runtime.atomic import sha256_file
from tbps_runtime.model.tokenizer import load_tokenizer, tokenize
from tbps_runtime.outputs import check_writable, is_disk_full, os_error_of
from tbps_train.backbones import load_image_weights, resolve_image_weights
from tbps_train.checkpoint import (
    check_checkpoint_output, checkpoint_payload, load_checkpoint, model_from_checkpoint, save_checkpoint,
)
from tbps_train.config import ModelConfig, RunConfig, apply_overrides, not_in_paper
from tbps_train.data.pipeline import (
    CaptionTable, ImageStore, batches, collate_pixels, flip_horizontally, random_flips,
)
from tbps_train.data.readers import has_split, read_split
from tbps_train.data.records import split_fingerprint
from tbps_train.data.twins import read_twin_queries
from tbps_train.distributed import Distributed
from tbps_train.evaluate import evaluate
from tbps_train.collapse import CollapseMonitor, collapsed_slots, slot_names
from tbps_train.losses import Gather, compute_losses, ranking_negatives, token_diversity_loss
from tbps_train.model import TextBasedPersonSearch
from tbps_train.plots import curves_path, plot_history
from tbps_train.text import load_text_backbone, text_backbone_from_config

logger = logging.getLogger(__name__)

# Training steps between two looks at the load (a look reads /proc/stat: microseconds).
ADAPT_EVERY = 10


class TextFeatureCache:
    """The frozen backbone's output for every caption, computed once (float16 to halve memory).

    Under data parallelism each process runs the backbone on its share of
    the captions and the shares are exchanged, so every caption is encoded
    once per job and every process holds the whole cache.
    """

    def __init__(self, model: TextBasedPersonSearch, tokenizer, texts: list[str],
                 batch_size: int = 256, device: str = "cpu", progress: bool = True,
                 distributed: Distributed | None = None):
        distributed = distributed or Distributed(device=device)
        share = distributed.share(len(texts))
        chunks, masks = [], []
        for start in tqdm(range(share.start, share.stop, batch_size), desc="cache text features",
                          disable=not progress, leave=False):
            ids, mask = tokenize(tokenizer, texts[start:min(start + batch_size, share.stop)])
            ids, mask = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
            chunks.append(model.text_features(ids, mask).to(torch.float16).cpu())
            masks.append(mask.cpu())
        length = distributed.max(max((c.shape[1] for c in chunks), default=1))
        hidden_size = model.text_backbone.config.hidden_size
        self.hidden = torch.cat([_pad(c, length) for c in chunks]) if chunks else torch.zeros(0, length, hidden_size,
                                                                                              dtype=torch.float16)
        self.mask = torch.cat([_pad(m, length) for m in masks]) if masks else torch.zeros(0, length, dtype=torch.int64)
        self.hidden = distributed.gather_in_blocks(self.hidden)  # (Q, L, hidden) float16
        self.mask = distributed.gather_in_blocks(self.mask)  # (Q, L) int64

    def batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) caption indices -> hidden (B, L_b, hidden) float32, mask (B, L_b), L_b = longest in batch."""
        index = torch.from_numpy(indices)
        mask = self.mask[index]
        length = int(mask.sum(dim=1).max())
        return self.hidden[index, :length].float(), mask[:, :length]


def _pad(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """Right-pad dim 1 with zeros to ``length``."""
    extra = length - tensor.shape[1]
    return torch.nn.functional.pad(tensor, (0, 0) * (tensor.dim() - 2) + (0, extra)) if extra else tensor


_TEXT_CACHES: dict[str, TextFeatureCache] = {}

# Cached backbone maps are kept in float32 up to this many bytes (then the training loss equals
# the full model's with a frozen backbone), in float16 beyond it.
IMAGE_CACHE_FLOAT32_BYTES = 4 << 30


class ImageFeatureCache:
    """The frozen image backbone's output for every training image and its mirror image, computed once.

    ``--cache-image-features``: training then runs only what is above the
    backbone, tens of milliseconds a step on a CPU. It gives up fine-tuning
    the backbone (the paper trains it at 0.1x the learning rate).
    """

    def __init__(self, model: TextBasedPersonSearch, store: ImageStore, batch_size: int = 64,
                 device: str = "cpu", progress: bool = True):
        backbone = model.image_backbone
        h, w = model.feature_hw
        size = len(store) * 2 * backbone.out_channels * h * w
        dtype = torch.float32 if size * 4 <= IMAGE_CACHE_FLOAT32_BYTES else torch.float16
        logger.info("caching image backbone features: %d images x 2 flips, %.1f GB (%s)",
                    len(store), size * (4 if dtype == torch.float32 else 2) / 1e9, str(dtype).removeprefix("torch."))
        self.maps = torch.empty(len(store), 2, backbone.out_channels, h, w, dtype=dtype)  # (N, 2, C, h, w)
        was_training = backbone.training
        backbone.eval()
        with torch.no_grad():
            for start in tqdm(range(0, len(store), batch_size), desc="cache image features",
                              disable=not progress, leave=False):
                indices = np.arange(start, min(start + batch_size, len(store)))
                pixels = store.batch(indices).to(device).contiguous(memory_format=torch.channels_last)
                for flip, batch in enumerate((pixels, pixels.flip(-1))):
                    self.maps[indices, flip] = backbone(batch).to(dtype).cpu()
        backbone.train(was_training)

    def batch(self, images: np.ndarray, flips: torch.Tensor) -> torch.Tensor:
        """(B,) image indices and (B,) bool mirror flags -> (B, C, h, w) float32 backbone maps."""
        maps = self.maps[torch.from_numpy(images), flips.long()].float()
        return maps.contiguous(memory_format=torch.channels_last)  # as the backbone's output: a faster 1x1 conv


_IMAGE_CACHES: dict[str, ImageFeatureCache] = {}


@dataclass
class TrainingData:
    """A split turned into tensors: crops, captions, identities remapped to 0..c-1."""

    records: list
    store: ImageStore
    captions: CaptionTable
    labels: torch.Tensor  # (Q,) training identity per caption

    @classmethod
    def load(cls, dataset: str, root: Path, image_size: tuple[int, int], progress: bool) -> "TrainingData":
        records = read_split(dataset, root, "train")
        captions = CaptionTable.from_records(records)
        identities = {pid: i for i, pid in enumerate(sorted(set(int(p) for p in captions.person_ids)))}
        if len(identities) < 2:
            raise DataError(f"the train split of {root} has {len(identities)} identity; training needs at least 2")
        labels = torch.tensor([identities[int(p)] for p in captions.person_ids])
        return cls(records, ImageStore(records, image_size, progress), captions, labels)

    @property
    def num_identities(self) -> int:
        return int(self.labels.max()) + 1


# The identity classifier's weights: a new run on other people starts them afresh.
CLASSIFIER_PREFIX = "id_classifiers."
# Model settings that name where the weights come from: fine-tuning keeps the checkpoint's,
# even where another value would give tensors of the same shapes.
_INIT_KEEPS = ("image_backbone", "text_backbone", "decoder_query_bias")


@dataclass(frozen=True)
class InitSource:
    """A trained checkpoint a new run starts from (``init``, ``tbps train --init``): its weights but for the
    identity classifier, its model config and its tokenizer."""

    path: Path
    payload: dict[str, Any]
    model: TextBasedPersonSearch  # as trained, its own classifier included
    sha256: str

    @classmethod
    def load(cls, path: str | Path) -> "InitSource":
        """Read and check ``path`` (CheckpointError, InputFileNotFoundError as for any checkpoint)."""
        payload = load_checkpoint(path)
        model, _ = model_from_checkpoint(payload)
        return cls(Path(path), payload, model, sha256_file(path))

    @property
    def config(self) -> RunConfig:
        return RunConfig.from_dict(self.payload["config"])

    def record(self) -> dict[str, Any]:
        """What the new checkpoint says it started from (plain containers)."""
        state = self.payload.get("train_state")
        return {"name": self.path.name, "path": str(self.path.absolute()), "sha256": self.sha256,
                "dataset": self.payload.get("dataset"), "num_identities": self.payload["num_identities"],
                "epochs": state["epoch"] if isinstance(state, dict) else None}


def init_model(source: InitSource, config: ModelConfig, num_identities: int) -> TextBasedPersonSearch:
    """A model of ``config`` holding ``source``'s weights, but for a new identity classifier over
    ``num_identities`` people (initialised from torch's global generator: seed it first).

    Raises:
        ConfigError: ``config`` differs from the checkpoint's model where its weights depend on it
            (another backbone, or tensors of other shapes), naming the settings.
    """
    trained = source.config.model
    differ = [f.name for f in dataclasses.fields(ModelConfig) if getattr(config, f.name) != getattr(trained, f.name)]
    refused = [n for n in differ
               if n in _INIT_KEEPS or _reshapes(source, dataclasses.replace(trained, **{n: getattr(config, n)}))]
    if not refused and differ and _reshapes(source, config):  # only together (image_size with last_stride)
        refused = differ
    if refused:
        settings = ", ".join(f"{n} {getattr(config, n)!r} (the checkpoint's: {getattr(trained, n)!r})" for n in refused)
        raise ConfigError(f"fine-tuning {source.path} keeps its model, but the run config changes it: {settings}; "
                          "leave these settings to the checkpoint", checkpoint=str(source.path),
                          settings=refused)
    model = TextBasedPersonSearch(config, text_backbone_from_config(source.payload["text_backbone_config"]),
                                  num_identities)
    weights = {k: v for k, v in source.model.state_dict().items() if not k.startswith(CLASSIFIER_PREFIX)}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected and all(k.startswith(CLASSIFIER_PREFIX) for k in missing), (missing, unexpected)
    return model


def _reshapes(source: InitSource, config: ModelConfig) -> bool:
    """Whether a model of ``config`` has weights (the classifier's aside) of other names or shapes than
    ``source``'s: built on PyTorch's meta device, so nothing is allocated."""
    try:
        with torch.device("meta"), warnings.catch_warnings():  # a shape probe: its init warnings are noise
            warnings.simplefilter("ignore")
            skeleton = TextBasedPersonSearch(config, text_backbone_from_config(source.payload["text_backbone_config"]),
                                             1)
    except ConfigError:  # not buildable (e.g. stripes that do not divide the map): not the checkpoint's model
        return True
    return _shapes(skeleton) != _shapes(source.model)


def _shapes(model: TextBasedPersonSearch) -> dict[str, tuple[int, ...]]:
    """Every weight's shape but the identity classifier's, by name."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith(CLASSIFIER_PREFIX)}


def steps_per_epoch(count: int, batch_size: int, world_size: int = 1) -> int:
    """The optimiser steps of an epoch over ``count`` captions (as :func:`batches` cuts them; a batch smaller
    than the job, or of one, is skipped)."""
    full, last = divmod(count, batch_size)
    return full * (batch_size >= world_size) + (last >= max(2, world_size))


def build_optimizer(model: TextBasedPersonSearch, config: RunConfig) -> tuple[torch.optim.Optimizer, Any]:
    """Adam with the image backbone at lr x image_backbone_lr_scale; the text backbone is not optimised."""
    train_cfg = config.train
    backbone = [p for p in model.image_backbone.parameters() if p.requires_grad]
    # The decoder tokens get a group of their own only under the token_lr_scale diagnostic.
    token_names = {"shared_tokens", "text_tokens", "text_shared_tokens"} if train_cfg.token_lr_scale != 1 else set()
    tokens = [p for n, p in model.named_parameters() if n in token_names and p.requires_grad]
    grouped = {id(p) for p in backbone + tokens}
    rest = [p for n, p in model.named_parameters()
            if p.requires_grad and id(p) not in grouped and not n.startswith("text_backbone.")]
    groups = [{"params": backbone, "lr": train_cfg.lr * train_cfg.image_backbone_lr_scale},
              {"params": rest, "lr": train_cfg.lr}]
    if tokens:
        groups.append({"params": tokens, "lr": train_cfg.lr * train_cfg.token_lr_scale})
    optimizer = torch.optim.Adam(groups, weight_decay=train_cfg.weight_decay)
    milestones, gamma, warmup = list(train_cfg.lr_milestones), train_cfg.lr_gamma, train_cfg.warmup_epochs
    if not warmup:
        return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma)

    def factor(epoch: int) -> float:  # linear warm-up over the first epochs, then the step decay
        return min(1.0, (epoch + 1) / (warmup + 1)) * gamma ** sum(epoch >= m for m in milestones)

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class TrainingPass(torch.nn.Module):
    """The training forward pass as one module call: DistributedDataParallel only hooks ``forward``."""

    def __init__(self, model: TextBasedPersonSearch, from_image_features: bool = False):
        super().__init__()
        self.model = model
        self.from_image_features = from_image_features

    def forward(self, pixels: torch.Tensor, hidden: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """S_v, S_t (B, K, d) and their identity logits (B, K, c). ``pixels`` are the backbone's
        (B, C, h, w) maps when the pass runs from cached image features."""
        encode = self.model.encode_image_features if self.from_image_features else self.model.encode_image
        image = encode(pixels)
        text = self.model.encode_text_features(hidden, mask)
        return image.slots, text.slots, self.model.identity_logits(image.slots), self.model.identity_logits(text.slots)


def train_step(model: TextBasedPersonSearch, pixels: torch.Tensor, hidden: torch.Tensor,
               mask: torch.Tensor, labels: torch.Tensor, config: RunConfig,
               forward: torch.nn.Module | None = None, gather: Gather | None = None,
               negatives: str = "hardest", monitor: CollapseMonitor | None = None) -> dict[str, torch.Tensor]:
    """One batch's loss terms (Eq. 13's parts); the caller sums those ending in ``_loss``.

    ``pixels`` are (B, 3, H, W) images, or the frozen backbone's (B, C, h, w)
    maps when ``forward`` runs from cached image features. ``forward`` is the
    model's TrainingPass wrapped for data parallelism, ``gather`` the matching
    :meth:`Distributed.gather`; with them the terms are this process's share
    of the global batch's terms. ``negatives`` is "all" during the ranking
    warm-up; ``monitor`` sees every step's embeddings.
    """
    image_slots, text_slots, image_logits, text_logits = (forward or TrainingPass(model))(pixels, hidden, mask)
    if monitor is not None:
        monitor.add(image_slots.detach(), text_slots.detach(), labels)
    terms = compute_losses(image_slots, text_slots, image_logits, text_logits, labels, model.slot_groups(),
                           config.loss, gather, negatives)
    if config.loss.token_diversity_weight:
        queries = [model.token_queries(t) for t in (model.shared_tokens, model.text_tokens) if len(t) > 1]
        if queries:
            terms["token_diversity_loss"] = config.loss.token_diversity_weight * token_diversity_loss(queries)
    return terms


def wrap_for_data_parallel(model: TextBasedPersonSearch, config: RunConfig,
                           distributed: Distributed) -> torch.nn.Module:
    """The TrainingPass, in DistributedDataParallel when there are several processes.

    BatchNorm layers become SyncBatchNorm on GPUs (config.train.sync_batchnorm),
    so the statistics are the global batch's, as on one GPU. PyTorch's
    SyncBatchNorm has no CPU implementation: on gloo they stay per process.
    """
    forward = TrainingPass(model, config.train.cache_image_features)
    if not distributed.enabled:
        return forward
    has_batchnorm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    on_gpu = distributed.device.startswith("cuda")
    if has_batchnorm and on_gpu and config.train.sync_batchnorm:
        forward = torch.nn.SyncBatchNorm.convert_sync_batchnorm(forward)
    elif has_batchnorm and distributed.is_main:
        logger.warning("BatchNorm statistics are per process (%s): a step differs slightly from one process's",
                       "sync_batchnorm is off" if on_gpu else "SyncBatchNorm needs GPUs")
    # Ablations that drop C or F leave some parameters without gradient.
    unused = not (config.model.use_coarse and config.model.use_fine)
    return torch.nn.parallel.DistributedDataParallel(
        forward, device_ids=[distributed.local_rank] if on_gpu else None, find_unused_parameters=unused,
    )


# Called after every optimiser step with (steps done, steps this run takes): the quickstart's time estimate.
StepHook = Callable[[int, int], None]


class Trainer:
    """Runs epochs, evaluates on the validation split, writes the checkpoint after every epoch."""

    def __init__(self, config: RunConfig, dataset: str, root: str | Path, output: str | Path,
                 resume: bool = False, image_weights: str | Path | None = None, progress: bool = True,
                 resume_epochs: int | None = None, threads: int | None = None,
                 init: str | Path | InitSource | None = None, on_step: StepHook | None = None):
        self.output, self.dataset, self.root = Path(output), dataset, Path(root)
        check_writable(self.output, "the checkpoint")  # before training, not after the first epoch
        check_checkpoint_output(self.output)  # only ever a checkpoint is replaced
        self.start_epoch, self.history, self.on_step = 0, [], on_step
        self.init = self._init_source(init, resume, image_weights)
        # The dataset the resumed run recorded, and the checkpoint the run started from (carried forward).
        self.recorded_data, self.lineage = None, self.init.record() if self.init else None
        state = None
        self.image_weights: dict[str, Any] = {"source": None}
        if resume and self.output.exists():
            state = self._load_resume_state(resume_epochs)  # the saved model and config
        else:
            self.config = self._run_config(config, image_weights)
        # Under torchrun: this process's rank and device; otherwise one process on the configured device.
        self.distributed = Distributed.from_environment(self.config.train.device)
        self.progress = progress and self.distributed.is_main
        self.threads, self.adaptive_threads = training_threads(threads)
        self.data = TrainingData.load(dataset, self.root, self.config.model.image_size, self.progress)
        # Image paths are relative to the root folder, or to a csv file's folder.
        self.fingerprint = split_fingerprint(self.data.records, self.root if self.root.is_dir() else self.root.parent)
        if state is None:
            self.model = self._new_model() if self.init is None else self._model_from_init()
        else:
            self._check_same_data()
            if self.model.id_classifiers[0].out_features != self.data.num_identities:
                raise CheckpointError(
                    f"{self.output} was trained on {self.model.id_classifiers[0].out_features} identities, "
                    f"the train split of {root} has {self.data.num_identities}: resume on the same data"
                )
        device = self.distributed.device
        self.model.to(device)
        if self.config.train.cache_image_features:
            self.model.image_backbone.requires_grad_(False)  # frozen: not optimised, maps cached once
        # NHWC convolutions train the image backbone faster on CPUs; weights and results are unchanged.
        self.model.image_backbone.to(memory_format=torch.channels_last)
        self.forward = wrap_for_data_parallel(self.model, self.config, self.distributed)
        self.optimizer, self.scheduler = build_optimizer(self.model, self.config)
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        self.tokenizer = load_tokenizer(self.tokenizer_json, self.config.model.max_text_length)
        self.val_records = read_split(dataset, self.root, "val") if has_split(dataset, self.root, "val") else None
        self.val_subsets = twin_subsets(dataset, self.root, "val", self.val_records)
        self.text_cache = self._text_cache() if self.config.train.cache_text else None
        self.image_cache = self._image_cache() if self.config.train.cache_image_features else None
        self.monitor = CollapseMonitor(slot_names(self.model.slot_groups()), self.config.loss.margin)
        for note in not_in_paper(self.config):
            logger.info("not in the paper: %s", note)
        if self.distributed.enabled:
            logger.info("data parallel: %d processes, global batch %d", self.distributed.world_size,
                        self.config.train.batch_size)

    def _text_cache(self) -> TextFeatureCache:
        """The caption features, reused from the previous run in this process when nothing they depend on changed.

        An ablation trains many models over the same captions with the same
        frozen backbone; the key covers the backbone's weights, the
        tokenizer and the captions.
        """
        device, texts = self.distributed.device, self.data.captions.texts
        if self.distributed.enabled:
            return TextFeatureCache(self.model, self.tokenizer, texts, device=device, progress=self.progress,
                                    distributed=self.distributed)
        digest = hashlib.sha256(self.tokenizer_json.encode())
        digest.update(str(self.config.model.max_text_length).encode())
        for tensor in self.model.text_backbone.state_dict().values():
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        digest.update("\0".join(texts).encode())
        key = digest.hexdigest()
        if key not in _TEXT_CACHES:
            _TEXT_CACHES.clear()  # one dataset's cache at a time
            _TEXT_CACHES[key] = TextFeatureCache(self.model, self.tokenizer, texts, device=device,
                                                 progress=self.progress)
        return _TEXT_CACHES[key]

    def _image_cache(self) -> ImageFeatureCache:
        """The frozen backbone's maps of the train split, reused by the next run in this process when
        the backbone's weights, the image size and the images are the same (an ablation's rows)."""
        digest = hashlib.sha256(str(self.config.model.image_size).encode())
        for tensor in self.model.image_backbone.state_dict().values():
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        digest.update("\0".join(str(p) for p in self.data.store.paths).encode())
        key = digest.hexdigest()
        if key not in _IMAGE_CACHES:
            _IMAGE_CACHES.clear()
            _IMAGE_CACHES[key] = ImageFeatureCache(self.model, self.data.store, device=self.distributed.device,
                                                   progress=self.progress)
        return _IMAGE_CACHES[key]

    def _init_source(self, init: str | Path | InitSource | None, resume: bool,
                     image_weights: str | Path | None) -> InitSource | None:
        """The checkpoint a new run starts from, read; None without ``init``."""
        if init is None:
            return None
        if resume:
            raise ConfigError("resume continues the run saved in the output, init starts a new run from another "
                              "checkpoint: give one of them", code="init_with_resume")
        if image_weights is not None:
            raise ConfigError("with init the image backbone's weights are the checkpoint's: drop image_weights",
                              code="init_with_image_weights")
        path = init.path if isinstance(init, InitSource) else Path(init)
        if path.exists() and self.output.exists() and os.path.samefile(path, self.output):
            raise ConfigError(f"the run would write over {path}, the checkpoint it starts from: choose another "
                              "output", code="init_overwrites_source", path=str(path))
        return init if isinstance(init, InitSource) else InitSource.load(path)

    def _run_config(self, config: RunConfig, image_weights: str | Path | None) -> RunConfig:
        """``config`` as this new run trains it, validated."""
        if image_weights is not None:
            config = apply_overrides(config, "train", image_weights=str(image_weights))
        if self.init is not None:  # the image backbone's weights come from the checkpoint, not ImageNet's
            config = dataclasses.replace(config, train=dataclasses.replace(config.train, image_weights=None))
        config.validate()
        return config

    def _model_from_init(self) -> TextBasedPersonSearch:
        """The checkpoint's model and tokenizer, with a new identity classifier for this train split."""
        torch.manual_seed(self.config.train.seed)  # the new classifier's draw
        model = init_model(self.init, self.config.model, self.data.num_identities)
        self.tokenizer_json = self.init.payload["tokenizer_json"]
        self.image_weights = {"source": "init", "path": str(self.init.path.absolute()), "sha256": self.init.sha256}
        logger.info("starting from %s (trained on %d identities; a new classifier for %d)", self.init.path,
                    self.init.payload["num_identities"], self.data.num_identities)
        return model

    def _check_same_data(self) -> None:
        """Refuse to resume on another train split than the one the checkpoint was trained on (the same
        identity count is no proof); a checkpoint that predates the fingerprint resumes with a warning."""
        recorded = self.recorded_data if isinstance(self.recorded_data, dict) else {}
        theirs, here = recorded.get("train_fingerprint"), f"the train split of {self.dataset} {self.root}"
        if not isinstance(theirs, str):
            logger.warning("%s records no fingerprint of its training data (an older tbps wrote it): resuming "
                           "without checking that %s is the data it was trained on", self.output, here)
            return
        if theirs == self.fingerprint:
            return
        there = f"the train split of {recorded.get('name')} {recorded.get('root')}"
        same_place = (recorded.get("name") == self.dataset
                      and os.path.abspath(str(recorded.get("root"))) == os.path.abspath(self.root))
        change = (f"{there} has changed since {self.output} was trained on it (fingerprint {theirs[:12]}, now "
                  f"{self.fingerprint[:12]})" if same_place else
                  f"{self.output} was trained on {there} (fingerprint {theirs[:12]}), not on {here} "
                  f"({self.fingerprint[:12]})")
        raise CheckpointError(f"{change}: resume on the data it was trained on, or start a new run from it (init) "
                              "to fine-tune it on this one", code="resume_other_data", change=change,
                              checkpoint=str(self.output),
                              trained_on=recorded, dataset={"name": self.dataset, "root": str(self.root)})

    def _new_model(self) -> TextBasedPersonSearch:
        torch.manual_seed(self.config.train.seed)
        text_backbone, self.tokenizer_json = load_text_backbone(self.config.model.text_backbone,
                                                                self.config.train.seed)
        model = TextBasedPersonSearch(self.config.model, text_backbone, self.data.num_identities)
        path = resolve_image_weights(self.config.model.image_backbone, self.config.train.image_weights)
        if path is not None:
            load_image_weights(model.image_backbone, path)
            self.image_weights = {"source": self.config.train.image_weights, "path": str(path),
                                  "sha256": sha256_file(path)}
        return model

    def _load_resume_state(self, epochs: int | None) -> dict[str, Any]:
        """The run saved in ``output``, with its own config; ``epochs`` may extend it."""
        payload = load_checkpoint(self.output)
        state = payload.get("train_state")
        if state is None:
            raise CheckpointError(f"{self.output} holds no training state to resume from")
        self.model, self.config = model_from_checkpoint(payload)
        if epochs is not None:
            self.config = apply_overrides(self.config, "train", epochs=epochs)
        self.tokenizer_json = payload["tokenizer_json"]
        self.image_weights = payload.get("image_weights", {"source": None})
        self.recorded_data, self.lineage = payload.get("dataset"), payload.get("init")
        self.start_epoch, self.history = state["epoch"], list(payload.get("history", []))
        logger.info("resuming %s after epoch %d", self.output, self.start_epoch)
        return state

    def run(self) -> dict[str, Any]:
        """Train the remaining epochs; returns the last epoch's record."""
        epochs = self.config.train.epochs
        if self.start_epoch >= epochs:
            logger.info("%s already finished %d epochs", self.output, epochs)
            return self.history[-1] if self.history else {}
        main = self.distributed.is_main
        per_epoch = steps_per_epoch(len(self.data.labels), self.config.train.batch_size, self.distributed.world_size)
        self.steps_done, self.steps_total = 0, (epochs - self.start_epoch) * per_epoch
        for epoch in range(self.start_epoch, epochs):
            started = time.perf_counter()
            losses = self._epoch(epoch)
            record = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - started, 2),
                      "threads": self._epoch_threads(),
                      "ranking_negatives": ranking_negatives(self.config.loss, epoch), **losses,
                      **self._health(epoch)}
            if main and self._evaluate_now(epoch):
                record["val"] = evaluate(self.model, self.tokenizer, self.val_records,
                                         device=self.distributed.device, progress=False, per_slot=True,
                                         query_subsets=self.val_subsets)
            self.history.append(record)
            if main:  # rank 0 alone logs and writes; the others wait for the checkpoint
                logger.info(_epoch_line(record, epochs))
                self._save(epoch + 1)
            self.distributed.barrier()
        if main:
            plot = plot_history(self.history, curves_path(self.output),
                                title=f"{self.output.name} on {self.dataset}")
            logger.info("training curves: %s", plot)
        return self.history[-1]

    def _health(self, epoch: int) -> dict[str, Any]:
        """The epoch's collapse diagnostics (tbps_train.collapse), with a warning for each collapsed slot."""
        health = self.monitor.epoch_summary()
        collapsed = collapsed_slots(health)
        if collapsed and self.distributed.is_main:
            worst = health[collapsed[0]]
            logger.warning("epoch %d: %d slot(s) collapsed (%s): hinges at %.2f of the margin, %.0f%% active, "
                           "embedding spread %.4f; the ranking loss gives no gradient there (see "
                           "--ranking-warmup-epochs)", epoch + 1, len(collapsed), ", ".join(collapsed),
                           worst["loss_ratio"], 100 * worst["active_hinges"],
                           max(worst["spread_image"], worst["spread_text"]))
        return {"health": health, "collapsed": collapsed}

    def _epoch_threads(self) -> int | dict[str, int]:
        """The fixed thread count, or (policy) the steps run at each count this epoch."""
        if self.adaptive_threads is None:
            return self.threads.threads
        counts = {str(n): steps for n, steps in sorted(self.adaptive_threads.steps_by_threads.items())}
        self.adaptive_threads.steps_by_threads.clear()
        return counts

    def _evaluate_now(self, epoch: int) -> bool:
        every = self.config.train.eval_every
        last = epoch + 1 == self.config.train.epochs
        return bool(self.val_records) and every > 0 and ((epoch + 1) % every == 0 or last)

    def _epoch(self, epoch: int) -> dict[str, float]:
        cfg, device, distributed = self.config.train, self.distributed.device, self.distributed
        # One generator per epoch, seeded from (seed, epoch): a resumed run draws the same batches,
        # and every process draws the same global batches (a batch smaller than the job is skipped).
        generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        self.model.train()
        if self.image_cache is not None:
            self.model.image_backbone.eval()  # frozen: its BatchNorm statistics stay the pretrained ones
        totals: dict[str, float] = {}
        steps = [chunk for chunk in batches(len(self.data.labels), cfg.batch_size, generator)
                 if len(chunk) >= distributed.world_size]
        shares = [distributed.share(len(chunk)) for chunk in steps]
        gather = distributed.gather if distributed.enabled else None
        progress = tqdm(self._image_batches([chunk[share] for chunk, share in zip(steps, shares)]),
                        total=len(steps), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not self.progress,
                        leave=False)
        negatives = ranking_negatives(self.config.loss, epoch)
        for (chunk, pixels), share, batch in zip(progress, shares, steps):
            flips = random_flips(len(batch), generator, cfg.flip_probability)[share]
            pixels = self._image_input(chunk, pixels, flips).to(device)
            hidden, mask = self._text_batch(chunk)
            terms = train_step(self.model, pixels, hidden.to(device), mask.to(device),
                               self.data.labels[chunk].to(device), self.config, self.forward, gather,
                               negatives, self.monitor)
            loss = sum(v for k, v in terms.items() if k.endswith("_loss"))  # Eq. 13 (this process's share)
            self.optimizer.zero_grad(set_to_none=True)
            # DDP averages gradients over processes; the global loss is the sum of the shares.
            (loss * distributed.world_size if distributed.enabled else loss).backward()
            self.optimizer.step()
            self.steps_done += 1
            if self.on_step is not None:
                self.on_step(self.steps_done, self.steps_total)
            for name, value in terms.items():
                totals[name] = totals.get(name, 0.0) + value.detach().item()
            if self.adaptive_threads is not None:
                self.adaptive_threads.step()
            totals["loss"] = totals.get("loss", 0.0) + loss.detach().item()
        self.scheduler.step()
        totals = distributed.sum(totals)
        return {**{name: round(value / max(len(steps), 1), 4) for name, value in totals.items()}, "steps": len(steps)}

    def _image_batches(self, steps: list[np.ndarray]):
        """(chunk, pixels) per step; decoded by worker processes when the split is not in memory;
        (chunk, None) when training from cached image features."""
        image_index = self.data.captions.image_index
        if self.image_cache is not None:
            return ((chunk, None) for chunk in steps)
        workers = self.config.train.num_workers
        if self.data.store.preloaded or workers == 0:
            return ((chunk, self.data.store.batch(image_index[chunk])) for chunk in steps)
        loader = torch.utils.data.DataLoader(
            self.data.store, batch_sampler=[image_index[chunk] for chunk in steps],
            num_workers=workers, collate_fn=collate_pixels,
        )
        return zip(steps, loader)

    def _image_input(self, chunk: np.ndarray, pixels: torch.Tensor | None, flips: torch.Tensor) -> torch.Tensor:
        """The step's (B, 3, H, W) pixels mirrored where ``flips`` says, or their cached backbone maps."""
        if self.image_cache is not None:
            return self.image_cache.batch(self.data.captions.image_index[chunk], flips)
        return flip_horizontally(pixels, flips).contiguous(memory_format=torch.channels_last)

    def _text_batch(self, chunk: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if self.text_cache is not None:
            return self.text_cache.batch(chunk)
        ids, mask = tokenize(self.tokenizer, [self.data.captions.texts[i] for i in chunk])
        ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)
        device = self.distributed.device
        return self.model.text_features(ids.to(device), mask.to(device)), mask

    def _save(self, epochs_done: int) -> None:
        last_val = next((r["val"] for r in reversed(self.history) if "val" in r), None)
        payload = checkpoint_payload(
            self.model, self.config, self.tokenizer_json, self.data.num_identities,
            metrics={"val": last_val} if last_val else {},
            history=self.history,
            # The fingerprint lets --resume refuse other data that happens to have as many identities.
            dataset={"name": self.dataset, "root": str(self.root), "train_fingerprint": self.fingerprint},
            **({"init": self.lineage} if self.lineage else {}),
            not_in_paper=not_in_paper(self.config),
            image_weights=self.image_weights,
            # Training is deterministic per machine; another CPU's kernels round differently.
            machine={"cpu": cpu_model(), "torch": str(torch.__version__), "threads": self.threads.source},
            train_state={"epoch": epochs_done, "optimizer": self.optimizer.state_dict(),
                         "scheduler": self.scheduler.state_dict()},
        )
        try:
            save_checkpoint(self.output, payload)  # atomic: a failed write leaves the previous checkpoint
        except (OSError, RuntimeError) as e:
            reason, disk_full = write_failure(e)
            if reason is None:
                raise
            kept = "the previous checkpoint there is unchanged" if self.output.exists() else "nothing was written"
            advice = "free some space, then run again (resuming)" if disk_full else "fix that, then run again"
            raise OutputError(f"cannot write the checkpoint {self.output} after epoch {epochs_done}: {reason}; {kept}; "
                              f"{advice}", path=str(self.output)) from e


def write_failure(error: BaseException) -> tuple[str | None, bool]:
    """Why writing a checkpoint failed, and whether the disk is full; (None, False) for an error that is
    not about writing (a bug: it keeps its traceback).

    An OSError anywhere in the exception's chain says why (ENOSPC, EDQUOT: a full disk). torch's zip
    writer reports a stream's failed write as ``RuntimeError("[enforce fail at inline_container.cc] ...
    unexpected pos ...")`` with the OSError as its context, and without one (torch writing a path itself)
    as that RuntimeError alone: a short write, which a full disk causes.
    """
    cause = os_error_of(error)
    if cause is not None:
        full = is_disk_full(cause)
        reason = cause.strerror or (os.strerror(cause.errno) if cause.errno else str(cause))
        return (f"the disk is full ({reason})" if full else reason), full
    lines = str(error).strip().splitlines()
    if isinstance(error, RuntimeError) and lines and "inline_container" in lines[0]:
        return f"the write stopped short, as on a full disk ({lines[0]})", True
    return None, False


def twin_subsets(dataset: str, root: Path, split: str, records: list | None) -> dict[str, np.ndarray]:
    """{"twins": caption rows} when the dataset has a twin split (tbps synth --parts), else {}."""
    if not records or dataset == "csv":
        return {}
    rows = read_twin_queries(root, split, records)
    return {"twins": rows} if rows is not None and len(rows) else {}


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    terms = ", ".join(f"{k.removesuffix('_loss')} {v:.3f}" for k, v in record.items() if k.endswith("_loss"))
    line = f"epoch {record['epoch']}/{epochs}  loss {record['loss']:.3f} ({terms})  {record['seconds']:.1f}s"
    if "val" in record:
        val = record["val"]
        line += f"  val R@1 {val['r1']:.2f} R@5 {val['r5']:.2f} R@10 {val['r10']:.2f} mAP {val['map']:.2f}"
    return line


def training_threads(threads: int | None, every: int = ADAPT_EVERY) -> tuple[ThreadChoice, AdaptiveThreads | None]:
    """``threads`` pins PyTorch's intra-op threads; None follows the load (tbps_runtime.threads),
    re-checked every ``every`` steps: call the returned AdaptiveThreads' ``step()`` once per step."""
    choice = choose_threads(threads)
    if not choice.adaptive:
        torch.set_num_threads(choice.threads)
        return choice, None
    logger.info("threads: %d (the policy: cores not busy elsewhere; re-checked every %d steps; "
                "--threads N pins it)", choice.threads, every)
    return choice, AdaptiveThreads(torch.set_num_threads, every=every, initial=choice.threads)


def train(config: RunConfig, dataset: str, root: str | Path, output: str | Path, resume: bool = False,
          image_weights: str | Path | None = None, progress: bool = True,
          resume_epochs: int | None = None, threads: int | None = None,
          init: str | Path | InitSource | None = None, on_step: StepHook | None = None) -> dict[str, Any]:
    """Train a model and write ``output``; returns the last epoch's record.

    With ``resume`` and an existing ``output``, training continues from the
    saved epoch with the saved config (``config`` is ignored), run to
    ``resume_epochs`` when given; it is refused when the train split is not
    the one the checkpoint records. With ``init`` (a checkpoint; not with
    ``resume``), a new run starts from its weights and tokenizer with a new
    identity classifier (fine-tuning on other people): ``config.model`` must
    be the checkpoint's model, or differ from it only where the weights do
    not depend on it (:func:`init_model`). ``threads`` pins PyTorch's thread count (bit-identical
    reruns); None (default) follows the load, see tbps_runtime.threads.
    ``on_step(done, total)`` is called after every optimiser step.

    Raises:
        OutputError: the disk filled up while writing ``output`` (the previous checkpoint is kept).
    """
    trainer = Trainer(config, dataset, root, output, resume, image_weights, progress, resume_epochs, threads,
                      init, on_step)
    try:
        return trainer.run()
    finally:
        trainer.distributed.close()
