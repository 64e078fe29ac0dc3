"""Training (paper Sec. 4.1): Adam, step decay, image backbone at a lower rate, text backbone frozen."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from tbps_runtime.errors import CheckpointError, DataError
from tbps_runtime.tokenizer import load_tokenizer, tokenize
from tbps_train.backbones import load_image_weights
from tbps_train.checkpoint import checkpoint_payload, load_checkpoint, model_from_checkpoint, save_checkpoint
from tbps_train.config import RunConfig, apply_overrides
from tbps_train.data.pipeline import CaptionTable, ImageStore, batches, collate_pixels, flip_horizontally
from tbps_train.data.readers import dataset_splits, read_split
from tbps_train.evaluate import evaluate
from tbps_train.losses import compute_losses
from tbps_train.model import TextBasedPersonSearch
from tbps_train.plots import curves_path, plot_history
from tbps_train.text import load_text_backbone

logger = logging.getLogger(__name__)


class TextFeatureCache:
    """The frozen backbone's output for every caption, computed once (float16 to halve memory)."""

    def __init__(self, model: TextBasedPersonSearch, tokenizer, texts: list[str],
                 batch_size: int = 256, device: str = "cpu", progress: bool = True):
        chunks, masks = [], []
        for start in tqdm(range(0, len(texts), batch_size), desc="cache text features", disable=not progress, leave=False):
            ids, mask = tokenize(tokenizer, texts[start:start + batch_size])
            ids, mask = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
            chunks.append(model.text_features(ids, mask).to(torch.float16).cpu())
            masks.append(mask.cpu())
        length = max(c.shape[1] for c in chunks)
        self.hidden = torch.cat([_pad(c, length) for c in chunks])  # (Q, L, hidden) float16
        self.mask = torch.cat([_pad(m, length) for m in masks])  # (Q, L) int64

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


def build_optimizer(model: TextBasedPersonSearch, config: RunConfig) -> tuple[torch.optim.Optimizer, Any]:
    """Adam with the image backbone at lr x image_backbone_lr_scale; the text backbone is not optimised."""
    train_cfg = config.train
    backbone = [p for p in model.image_backbone.parameters() if p.requires_grad]
    backbone_ids = {id(p) for p in backbone}
    rest = [p for n, p in model.named_parameters()
            if p.requires_grad and id(p) not in backbone_ids and not n.startswith("text_backbone.")]
    optimizer = torch.optim.Adam(
        [{"params": backbone, "lr": train_cfg.lr * train_cfg.image_backbone_lr_scale},
         {"params": rest, "lr": train_cfg.lr}],
        weight_decay=train_cfg.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(train_cfg.lr_milestones), train_cfg.lr_gamma)
    return optimizer, scheduler


def train_step(model: TextBasedPersonSearch, pixels: torch.Tensor, hidden: torch.Tensor,
               mask: torch.Tensor, labels: torch.Tensor, config: RunConfig) -> dict[str, torch.Tensor]:
    """One batch's loss terms (Eq. 13's parts); the caller sums those ending in ``_loss``."""
    image = model.encode_image(pixels)
    text = model.encode_text_features(hidden, mask)
    return compute_losses(
        image.slots, text.slots, model.identity_logits(image.slots), model.identity_logits(text.slots),
        labels, model.slot_groups(), config.loss,
    )


class Trainer:
    """Runs epochs, evaluates on the validation split, writes the checkpoint after every epoch."""

    def __init__(self, config: RunConfig, dataset: str, root: str | Path, output: str | Path,
                 resume: bool = False, image_weights: str | Path | None = None, progress: bool = True,
                 resume_epochs: int | None = None):
        self.output, self.progress, self.dataset, self.root = Path(output), progress, dataset, Path(root)
        self.start_epoch, self.history = 0, []
        state = None
        if resume and self.output.exists():
            state = self._load_resume_state(resume_epochs)  # the saved model and config
        else:
            config.validate()
            self.config = config
        self.data = TrainingData.load(dataset, self.root, self.config.model.image_size, progress)
        if state is None:
            self.model = self._new_model(image_weights)
        elif self.model.id_classifiers[0].out_features != self.data.num_identities:
            raise CheckpointError(
                f"{self.output} was trained on {self.model.id_classifiers[0].out_features} identities, "
                f"the train split of {root} has {self.data.num_identities}: resume on the same data"
            )
        device = self.config.train.device
        self.model.to(device)
        self.optimizer, self.scheduler = build_optimizer(self.model, self.config)
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        self.tokenizer = load_tokenizer(self.tokenizer_json, self.config.model.max_text_length)
        self.val_records = read_split(dataset, self.root, "val") if "val" in dataset_splits(dataset) else None
        self.text_cache = (TextFeatureCache(self.model, self.tokenizer, self.data.captions.texts,
                                            device=device, progress=progress)
                           if self.config.train.cache_text else None)

    def _new_model(self, image_weights: str | Path | None) -> TextBasedPersonSearch:
        torch.manual_seed(self.config.train.seed)
        text_backbone, self.tokenizer_json = load_text_backbone(self.config.model.text_backbone,
                                                                self.config.train.seed)
        model = TextBasedPersonSearch(self.config.model, text_backbone, self.data.num_identities)
        if image_weights:
            load_image_weights(model.image_backbone, image_weights)
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
        self.start_epoch, self.history = state["epoch"], list(payload.get("history", []))
        logger.info("resuming %s after epoch %d", self.output, self.start_epoch)
        return state

    def run(self) -> dict[str, Any]:
        """Train the remaining epochs; returns the last epoch's record."""
        epochs = self.config.train.epochs
        if self.start_epoch >= epochs:
            logger.info("%s already finished %d epochs", self.output, epochs)
            return self.history[-1] if self.history else {}
        for epoch in range(self.start_epoch, epochs):
            started = time.perf_counter()
            losses = self._epoch(epoch)
            record = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - started, 2), **losses}
            if self._evaluate_now(epoch):
                record["val"] = evaluate(self.model, self.tokenizer, self.val_records,
                                         device=self.config.train.device, progress=False)
            self.history.append(record)
            logger.info(_epoch_line(record, epochs))
            self._save(epoch + 1)
        plot = plot_history(self.history, curves_path(self.output), title=f"{self.output.name} on {self.dataset}")
        logger.info("training curves: %s", plot)
        return self.history[-1]

    def _evaluate_now(self, epoch: int) -> bool:
        every = self.config.train.eval_every
        last = epoch + 1 == self.config.train.epochs
        return bool(self.val_records) and every > 0 and ((epoch + 1) % every == 0 or last)

    def _epoch(self, epoch: int) -> dict[str, float]:
        cfg, device = self.config.train, self.config.train.device
        # One generator per epoch, seeded from (seed, epoch): a resumed run draws the same batches.
        generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        self.model.train()
        totals: dict[str, float] = {}
        steps = list(batches(len(self.data.labels), cfg.batch_size, generator))
        for chunk, pixels in tqdm(self._image_batches(steps), total=len(steps), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                                  disable=not self.progress, leave=False):
            pixels = flip_horizontally(pixels, generator, cfg.flip_probability).to(device)
            hidden, mask = self._text_batch(chunk)
            terms = train_step(self.model, pixels, hidden.to(device), mask.to(device),
                               self.data.labels[chunk].to(device), self.config)
            loss = sum(v for k, v in terms.items() if k.endswith("_loss"))  # Eq. 13
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            for name, value in terms.items():
                totals[name] = totals.get(name, 0.0) + value.detach().item()
            totals["loss"] = totals.get("loss", 0.0) + loss.detach().item()
        self.scheduler.step()
        return {name: round(value / max(len(steps), 1), 4) for name, value in totals.items()}

    def _image_batches(self, steps: list[np.ndarray]):
        """(chunk, pixels) per step; decoded by worker processes when the split is not in memory."""
        image_index = self.data.captions.image_index
        workers = self.config.train.num_workers
        if self.data.store.preloaded or workers == 0:
            return ((chunk, self.data.store.batch(image_index[chunk])) for chunk in steps)
        loader = torch.utils.data.DataLoader(
            self.data.store, batch_sampler=[image_index[chunk] for chunk in steps],
            num_workers=workers, collate_fn=collate_pixels,
        )
        return zip(steps, loader)

    def _text_batch(self, chunk: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if self.text_cache is not None:
            return self.text_cache.batch(chunk)
        ids, mask = tokenize(self.tokenizer, [self.data.captions.texts[i] for i in chunk])
        ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)
        return self.model.text_features(ids.to(self.config.train.device), mask.to(self.config.train.device)), mask

    def _save(self, epochs_done: int) -> None:
        last_val = next((r["val"] for r in reversed(self.history) if "val" in r), None)
        payload = checkpoint_payload(
            self.model, self.config, self.tokenizer_json, self.data.num_identities,
            metrics={"val": last_val} if last_val else {},
            history=self.history,
            dataset={"name": self.dataset, "root": str(self.root)},
            train_state={"epoch": epochs_done, "optimizer": self.optimizer.state_dict(),
                         "scheduler": self.scheduler.state_dict()},
        )
        save_checkpoint(self.output, payload)


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    terms = ", ".join(f"{k.removesuffix('_loss')} {v:.3f}" for k, v in record.items() if k.endswith("_loss"))
    line = f"epoch {record['epoch']}/{epochs}  loss {record['loss']:.3f} ({terms})  {record['seconds']:.1f}s"
    if "val" in record:
        val = record["val"]
        line += f"  val R@1 {val['r1']:.2f} R@5 {val['r5']:.2f} R@10 {val['r10']:.2f} mAP {val['map']:.2f}"
    return line


def train(config: RunConfig, dataset: str, root: str | Path, output: str | Path, resume: bool = False,
          image_weights: str | Path | None = None, progress: bool = True,
          resume_epochs: int | None = None) -> dict[str, Any]:
    """Train a model and write ``output``; returns the last epoch's record.

    With ``resume`` and an existing ``output``, training continues from the
    saved epoch with the saved config (``config`` is ignored), run to
    ``resume_epochs`` when given.
    """
    return Trainer(config, dataset, root, output, resume, image_weights, progress, resume_epochs).run()
