"""The model of paper Sec. 3: global, coarse and fine embeddings per modality.

Per modality m in {v, t} the model produces S_m = {g_m, C_m, F_m}: K = 1 + D + P
embeddings of size d (fewer when an ablation drops a group). Equation numbers
in comments are the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tbps_runtime.errors import ConfigError
from tbps_train.backbones import build_image_backbone
from tbps_train.config import ModelConfig


@dataclass
class Embeddings:
    """One modality's output. ``slots`` is (B, K, d), unnormalised, in the order
    [g, c_1..c_D, f_1..f_P]; ``attention`` is the decoder's cross-attention
    averaged over heads: (B, D, r) for images, (B, D + P, L) for text."""

    slots: torch.Tensor
    attention: torch.Tensor


class Encoder(nn.Module):
    """One multi-head self-attention with a residual (Eq. 1-3)."""

    def __init__(self, dim: int, num_heads: int, num_positions: int | None = None):
        super().__init__()
        # Eq. 3's M_v = V + E_pos: learnable position embeddings, visual encoder only.
        self.position_embedding = (
            nn.Parameter(torch.zeros(1, num_positions, dim)) if num_positions else None
        )
        if self.position_embedding is not None:
            nn.init.trunc_normal_(self.position_embedding, std=0.02)
        self.attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)

    def forward(self, features: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, r, d) features (``padding_mask`` (B, r), True = padding) -> (B, r, d)."""
        if self.position_embedding is not None:
            features = features + self.position_embedding  # M_v = V_bar + E_pos
        # Eq. 1-2: SA_i = softmax(Q_i K_i^T / sqrt(d_h)) V_i, heads concatenated and projected by W^O.
        attended, _ = self.attention(
            features, features, features, key_padding_mask=padding_mask, need_weights=False
        )
        return features + attended  # Eq. 3: M~ = M + MHSA(M)


class Decoder(nn.Module):
    """Cross-attention from learnable query tokens to encoded features (Eq. 4, Eq. 6)."""

    def __init__(self, dim: int, num_heads: int, query_bias: bool = True):
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        if not query_bias:
            # Eq. 4 has no query bias: hold nn.MultiheadAttention's b_q (shared by all tokens) at zero.
            with torch.no_grad():
                self.attention.in_proj_bias[:dim].zero_()
            keep = torch.ones(3 * dim)
            keep[:dim] = 0
            self.attention.in_proj_bias.register_hook(lambda grad: grad * keep.to(grad.device))

    def forward(
        self, tokens: torch.Tensor, features: torch.Tensor, padding_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (T, d), features (B, r, d) -> embeddings (B, T, d), weights (B, T, r) averaged over heads."""
        queries = tokens.unsqueeze(0).expand(features.shape[0], -1, -1)  # (B, T, d)
        embeddings, weights = self.attention(
            queries, features, features, key_padding_mask=padding_mask,
            need_weights=True, average_attn_weights=True,
        )
        return embeddings, weights


class TextBasedPersonSearch(nn.Module):
    """Image and text towers sharing a decoder, plus the identity classifiers (Eq. 7)."""

    def __init__(self, config: ModelConfig, text_backbone: nn.Module, num_identities: int):
        super().__init__()
        config.validate()
        self.config = config
        d, heads = config.embed_dim, config.num_heads
        self.image_backbone = build_image_backbone(config.image_backbone, config.image_size, config.last_stride)
        self.feature_hw = tuple(self.image_backbone.feature_hw)
        if self.feature_hw[0] % config.num_fine:
            raise ConfigError(
                f"the {self.feature_hw[0]}x{self.feature_hw[1]} feature map of {config.image_backbone} at "
                f"{config.image_size} cannot be cut into {config.num_fine} equal stripes (Eq. 5): "
                "change image_size or num_fine"
            )
        self.text_backbone = text_backbone
        self.image_projection = nn.Conv2d(self.image_backbone.out_channels, d, kernel_size=1)
        self.text_projection = nn.Linear(text_backbone.config.hidden_size, d)
        r = self.feature_hw[0] * self.feature_hw[1]
        self.visual_encoder = Encoder(d, heads, num_positions=r)
        self.text_encoder = Encoder(d, heads)
        self.decoder = Decoder(d, heads, config.decoder_query_bias)
        self.shared_tokens = nn.Parameter(_initial_tokens(config.num_coarse, config))  # D (Eq. 4)
        self.text_tokens = nn.Parameter(_initial_tokens(config.num_fine, config))  # D_t (Eq. 6)
        if not config.shared_decoder:  # Table 4's variant: the text side gets its own decoder and tokens
            self.text_decoder = Decoder(d, heads, config.decoder_query_bias)
            self.text_shared_tokens = nn.Parameter(_initial_tokens(config.num_coarse, config))
        # Eq. 7: one classifier W_ID per embedding slot, shared by the two modalities.
        self.id_classifiers = nn.ModuleList(
            nn.Linear(d, num_identities, bias=False) for _ in range(config.num_slots)
        )

    def train(self, mode: bool = True) -> "TextBasedPersonSearch":
        """As nn.Module.train, but the frozen text backbone stays in eval mode (no dropout)."""
        super().train(mode)
        self.text_backbone.eval()
        return self

    # ---- image tower -------------------------------------------------------

    def encode_image(self, pixel_values: torch.Tensor) -> Embeddings:
        """(B, 3, H, W) normalised pixels -> S_v as (B, K, d) plus A_avg's per-token maps."""
        return self.encode_image_features(self.image_backbone(pixel_values))

    def encode_image_features(self, backbone_map: torch.Tensor) -> Embeddings:
        """The image backbone's (B, C, h, w) output -> S_v as (B, K, d) plus A_avg's maps (B, D, r).

        Everything of the image tower above the backbone: training from cached
        features of a frozen backbone calls this directly.
        """
        feature_map = self.image_projection(backbone_map)  # (B, d, h, w)
        features = feature_map.flatten(2).transpose(1, 2)  # V_bar: (B, r, d), row-major over (h, w)
        global_embedding = features.amax(dim=1)  # g_v = GMP(V)
        encoded = self.visual_encoder(self._part_input(features))  # M~_v (Eq. 1-3)
        coarse, weights = self.decoder(self.shared_tokens, encoded)  # C_v (Eq. 4), weights (B, D, r)
        slots = [global_embedding.unsqueeze(1)]
        if self.config.use_coarse:
            slots.append(coarse)
        if self.config.use_fine:
            slots.append(self._image_fine(encoded, weights))
        return Embeddings(torch.cat(slots, dim=1), weights)

    def _image_fine(self, encoded: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Eq. 5: foreground-weighted features cut into P horizontal stripes, GMP each -> (B, P, d)."""
        foreground = weights.mean(dim=1)  # A_avg: (B, r), averaged over tokens (heads already)
        if self.config.foreground_scaling == "max":
            # Softmax weights average 1/r, so Eq. 5 as printed barely changes M~;
            # scaling to [0, 1] by the per-image maximum keeps its intent.
            foreground = foreground / foreground.amax(dim=1, keepdim=True)
        emphasised = encoded + foreground.unsqueeze(-1) * encoded  # M.._v = M~_v + A_avg (.) M~_v
        h, w = self.feature_hw
        p = self.config.num_fine
        stripes = emphasised.reshape(-1, p, (h // p) * w, emphasised.shape[-1])  # (B, P, r/P, d)
        return stripes.amax(dim=2)  # F_v: GMP per stripe

    # ---- text tower --------------------------------------------------------

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Frozen backbone output T: (B, L) ids -> (B, L, hidden). Cacheable per caption."""
        with torch.no_grad():
            return self.text_backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Embeddings:
        """(B, L) token ids and mask -> S_t as (B, K, d)."""
        return self.encode_text_features(self.text_features(input_ids, attention_mask), attention_mask)

    def encode_text_features(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> Embeddings:
        """Backbone output (B, L, hidden) -> S_t as (B, K, d) plus cross-attention (B, D + P, L)."""
        padding = attention_mask == 0  # (B, L), True = padding
        features = self.text_projection(hidden)  # T: (B, L, d)
        # g_t = GMP over real tokens only.
        global_embedding = features.masked_fill(padding.unsqueeze(-1), torch.finfo(features.dtype).min).amax(dim=1)
        encoded = self.text_encoder(self._part_input(features), padding)  # M~_t (Eq. 1-3)
        decoder, shared_tokens = self.decoder, self.shared_tokens
        if not self.config.shared_decoder:
            decoder, shared_tokens = self.text_decoder, self.text_shared_tokens
        coarse, coarse_weights = decoder(shared_tokens, encoded, padding)  # C_t (Eq. 4)
        fine, fine_weights = decoder(self.text_tokens, encoded, padding)  # F_t (Eq. 6)
        slots = [global_embedding.unsqueeze(1)]
        if self.config.use_coarse:
            slots.append(coarse)
        if self.config.use_fine:
            slots.append(fine)
        return Embeddings(torch.cat(slots, dim=1), torch.cat([coarse_weights, fine_weights], dim=1))

    # ---- helpers -----------------------------------------------------------

    def _part_input(self, features: torch.Tensor) -> torch.Tensor:
        """The encoders' input; detached under the ``detach_part_features`` diagnostic."""
        return features.detach() if self.config.detach_part_features else features

    def identity_logits(self, slots: torch.Tensor) -> torch.Tensor:
        """(B, K, d) embeddings -> (B, K, c): e W_ID for each slot's classifier (Eq. 7)."""
        if self.config.id_classifier == "cosine":
            return torch.stack([
                self.config.id_scale * F.linear(F.normalize(slots[:, k], dim=-1), F.normalize(head.weight, dim=-1))
                for k, head in enumerate(self.id_classifiers)
            ], dim=1)
        return torch.stack([head(slots[:, k]) for k, head in enumerate(self.id_classifiers)], dim=1)

    def token_queries(self, tokens: torch.Tensor) -> torch.Tensor:
        """(T, d) decoder tokens -> (T, d) query vectors W_q t + b_q of the shared decoder's attention."""
        attention, d = self.decoder.attention, self.config.embed_dim
        bias = attention.in_proj_bias[:d] if attention.in_proj_bias is not None else 0.0
        return tokens @ attention.in_proj_weight[:d].T + bias

    def slot_groups(self) -> dict[str, slice]:
        """Which slots hold g, C and F."""
        cfg = self.config
        d = cfg.num_coarse if cfg.use_coarse else 0
        p = cfg.num_fine if cfg.use_fine else 0
        return {"global": slice(0, 1), "coarse": slice(1, 1 + d), "fine": slice(1 + d, 1 + d + p)}


def _initial_tokens(count: int, config: ModelConfig) -> torch.Tensor:
    """(count, d) learnable tokens: N(0, std^2), or orthogonal rows of the same expected norm."""
    d, std = config.embed_dim, config.token_init_std
    if config.token_init == "orthogonal":
        tokens = torch.empty(count, d)
        nn.init.orthogonal_(tokens)  # unit rows, pairwise orthogonal (count <= d)
        return tokens * std * d ** 0.5
    return torch.randn(count, d) * std


def normalize_slots(slots: torch.Tensor) -> torch.Tensor:
    """L2-normalise each slot of (B, K, d), so Eq. 14 is one dot product of flattened vectors."""
    return F.normalize(slots, dim=-1)


def similarity(image_slots: torch.Tensor, text_slots: torch.Tensor) -> torch.Tensor:
    """Eq. 14: S(I, T) = sum over the K slots of cos(slot_v, slot_t).

    (N, K, d) images and (Q, K, d) texts -> (Q, N): with each slot normalised
    the sum of cosines is the dot product of the flattened (K*d) vectors.
    """
    image_flat = normalize_slots(image_slots).flatten(1)  # (N, K*d)
    text_flat = normalize_slots(text_slots).flatten(1)  # (Q, K*d)
    return text_flat @ image_flat.T
