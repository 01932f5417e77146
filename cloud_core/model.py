"""The CLOUD transformer: a BERT-style encoder over SCOPE tokens, a masked-LM head, property and Debye heads.

Plain PyTorch, pre-LayerNorm blocks with `F.scaled_dot_product_attention`. Shapes in comments:
B batch, L tokens (padded per batch), D width, H heads, V vocabulary, P properties.

Every property head predicts a value and a scale (the expected absolute error): the value is trained with
an L1 loss (the metric we report), the scale with the Laplace negative log-likelihood on the detached error,
so learning the uncertainty never pulls on the value. The Debye head predicts log θ_D (θ_D > 0 by
construction); heat capacity, internal energy, entropy and free energy at any temperature follow from
`cloud_core.debye`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cloud_core.debye import debye_cv
from cloud_core.tokenizer import (
    MIXED_ID,
    N_SEGMENTS,
    PAD,
    Batch,
    TokenTable,
    amount_id_range,
    element_id_range,
    generator_id_range,
)

PROPERTIES = ("formation_energy_per_atom", "band_gap", "log10_k_vrh", "log10_g_vrh")
DEBYE_FIT_TEMPERATURE = 305.0  # K, the temperature whose heat capacity the Debye head is trained on
GENERATOR_MAX_LENGTH = 40  # the longest generator code has 34 characters


@dataclass
class ModelConfig:
    vocab_size: int
    max_length: int = 256
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 256
    dropout: float = 0.1
    amount_numeric: bool = True  # add a learned vector × amount on composition-amount tokens
    pool_generators: bool = True  # the generator code becomes one token (see Encoder)
    pool_pairs: bool = False  # one slot per Wyckoff:element and element:amount pair (False: bundles made before it)
    element_features: int = 0  # > 0: add a learned projection of fixed element descriptors (element_features.py)
    properties: tuple[str, ...] = PROPERTIES
    # Standardisation of targets (set from the training data): value = mean + std * head output.
    target_mean: dict[str, float] = field(default_factory=dict)
    target_std: dict[str, float] = field(default_factory=dict)
    log_theta_mean: float = math.log(400.0)
    log_theta_std: float = 0.5
    # Per-output factor on the predicted sigma, fitted on the validation split (see train.calibrate).
    sigma_calibration: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["properties"] = list(self.properties)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        d = dict(d)
        d["properties"] = tuple(d.get("properties", PROPERTIES))
        return cls(**d)


class SelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        assert config.d_model % config.n_head == 0
        self.n_head = config.n_head
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor, queries: int | None = None) -> torch.Tensor:
        """Attention of every position (B, L, D), or with `queries` of only the first `queries` positions
        (B, queries, D), over all keys."""
        B, L, D = x.shape
        if queries is None:
            q, k, v = self.qkv(x).split(D, dim=2)  # 3 × (B, L, D)
        else:  # keys and values of every position, queries of the first few only
            weight, bias = self.qkv.weight, self.qkv.bias
            q = F.linear(x[:, :queries], weight[:D], bias[:D])  # (B, Q, D)
            k, v = F.linear(x, weight[D:], bias[D:]).split(D, dim=2)  # 2 × (B, L, D)
        Q = q.shape[1]
        q = q.view(B, Q, self.n_head, D // self.n_head).transpose(1, 2)  # (B, H, Q, D/H)
        k, v = (t.view(B, L, self.n_head, D // self.n_head).transpose(1, 2) for t in (k, v))  # (B, H, L, D/H)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, Q, D/H)
        return self.proj(y.transpose(1, 2).reshape(B, Q, D))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(config.d_model)
        self.attn = SelfAttention(config)
        self.ln2 = nn.LayerNorm(config.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(config.d_model, 4 * config.d_model),
            nn.GELU(),
            nn.Linear(4 * config.d_model, config.d_model),
        )
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor, queries: int | None = None) -> torch.Tensor:
        """(B, L, D) -> (B, L, D); with `queries`, only the first `queries` positions come out (B, queries, D)."""
        attended = self.attn(self.ln1(x), attn_mask, queries)
        x = x + self.drop(attended) if queries is None else x[:, :queries] + self.drop(attended)
        return x + self.drop(self.mlp(self.ln2(x)))


class Encoder(nn.Module):
    """Token + position + segment (+ amount) (+ element descriptor) embeddings, then pre-LN transformer blocks.

    With `pool_generators`, the generator code (up to 34 single-character tokens, more than half of a
    typical SCOPE string) enters the transformer as one token: the sum of one embedding per (position,
    character) pair, which keeps which character sits where (a sum of separate character and position
    embeddings would not). Sequences get about 2x shorter and attention ~4x cheaper, at no loss of
    information. A masked generator character is no longer a generator character, so it stays in the
    sequence as [MASK] and masked-LM pre-training still predicts it from context.

    With `pool_pairs`, tokens that belong to the one before them join its slot, their embeddings summed: the
    element(s) occupying a Wyckoff orbit (`4a Ba + Sr` of `4a:Ba+Sr`) and an element's amount (`Ba 0.5`).
    A detailed string then has one slot per occupied orbit and one per element, about 40 % fewer than tokens,
    and which element sits on which orbit is in the slot itself rather than in the order of two slots. Token
    and segment embeddings are summed per slot and positions count slots. A slot is labelled, in masked-LM
    pre-training, with its first token; a masked element or amount is [MASK], which joins nothing, so it
    keeps a slot (and its label) of its own.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.tokens = nn.Embedding(config.vocab_size, config.d_model, padding_idx=PAD)
        self.positions = nn.Embedding(config.max_length, config.d_model)
        self.segments = nn.Embedding(N_SEGMENTS, config.d_model)
        self.amount = nn.Parameter(torch.zeros(config.d_model)) if config.amount_numeric else None
        if config.element_features:
            # Descriptors per token (zeros on non-elements), filled by training and saved with the weights.
            self.register_buffer("element_table", torch.zeros(config.vocab_size, config.element_features))
            self.element_projection = nn.Linear(config.element_features, config.d_model, bias=False)
        else:
            self.element_table = self.element_projection = None
        self.generator_first, self.n_generator_chars = generator_id_range()
        self.generator_code = (
            nn.Embedding(GENERATOR_MAX_LENGTH * self.n_generator_chars, config.d_model)
            if config.pool_generators
            else None
        )
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model)

    def forward(self, batch: Batch, cls_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states (B, W, D) and, per output slot, its input position (B, W) (-1: pooled generator, padding).

        `cls_only`: the last block computes the [CLS] slot alone (B, 1, D), all that the property heads read;
        its keys and values still come from every slot, so the [CLS] vector is the same as in a full pass."""
        if self.generator_code is not None or self.config.pool_pairs:
            x, mask, source = self._pooled_slots(batch)
        else:
            L = batch.ids.shape[1]
            x = self._token_vectors(batch.ids, batch.segments, batch.values) + self.positions.weight[:L]  # (B, L, D)
            mask = batch.mask
            source = torch.where(mask, torch.arange(L, device=x.device), -1)  # (B, L)
        x = self.drop(x)
        # Padding keys are left out through a boolean mask (True = attend); (B, 1, 1, W) broadcasts.
        attn_mask = mask[:, None, None, :]
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(x, attn_mask, queries=1 if cls_only and i == last else None)
        return self.ln_f(x), source[:, : x.shape[1]]

    def _token_vectors(self, ids: torch.Tensor, segments: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Input vectors (..., D) of tokens (...): token + segment (+ amount × value) (+ element descriptors)."""
        x = self.tokens(ids) + self.segments(segments)
        if self.amount is not None:
            x = x + values.unsqueeze(-1).to(x.dtype) * self.amount
        if self.element_projection is not None:
            x = x + self.element_projection(self.element_table[ids])  # (..., F) -> (..., D)
        return x

    def _pooled_slots(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token vectors summed into slots (B, W, D), the slots' mask (B, W) and, per slot, the position of its
        first token (B, W) (-1: the pooled generator code, padding). See `slot_layout`.

        Only real tokens are embedded (N of them, gathered from the padded (B, L) batch): the padding of a
        batch, bucketed by slots rather than tokens, would otherwise cost as much as the tokens themselves."""
        ids, segments = batch.ids, batch.segments
        B, L = ids.shape
        D = self.config.d_model
        slot, is_gen, n_slots = slot_layout(batch, self.config)  # (B, L), (B, L), (B,)
        W = int(n_slots.max())
        others = batch.mask & ~is_gen
        row, col = others.nonzero(as_tuple=True)  # (N,) each
        vectors = self._token_vectors(ids[row, col], segments[row, col], batch.values[row, col])  # (N, D)
        if not self.config.pool_pairs:
            vectors = vectors + self.positions.weight[col]  # positions of tokens (with pool_pairs: of slots)
        pooled = vectors.new_zeros(B * W, D).index_add(0, row * W + slot[row, col], vectors).view(B, W, D)
        if self.generator_code is not None:  # slot 1, right after [CLS]
            place = (is_gen.cumsum(1) - 1).clamp(0, GENERATOR_MAX_LENGTH - 1)  # position within the code (B, L)
            g_row, g_col = is_gen.nonzero(as_tuple=True)  # (G,) each
            char = (ids[g_row, g_col] - self.generator_first).clamp(0, self.n_generator_chars - 1)
            code = self.generator_code(place[g_row, g_col] * self.n_generator_chars + char)  # (G, D)
            generator = code.new_zeros(B, D).index_add(0, g_row, code) + self.segments.weight[0]  # (B, D)
            pooled = torch.cat([pooled[:, :1], generator.unsqueeze(1).to(pooled.dtype), pooled[:, 2:]], 1)
        if self.config.pool_pairs:
            pooled = pooled + self.positions.weight[:W]
        mask = torch.arange(W, device=ids.device) < n_slots.unsqueeze(1)  # (B, W)
        # A slot's source is its first token: the one that does not join the slot before it.
        first = others & (slot != torch.cat([slot.new_full((B, 1), -2), slot[:, :-1]], 1))
        source = slot.new_full((B, W + 1), -1)
        source.scatter_(1, torch.where(first, slot, W), torch.arange(L, device=ids.device).expand(B, L))
        return pooled, mask, source[:, :W]


def slot_layout(batch: Batch, config: ModelConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each token goes inside the model: its slot (B, L) (-1 on padding), whether it is a generator
    character pooled into the code's slot (B, L), and the number of slots per row (B,).

    Slot 0 is [CLS]. With `pool_generators`, slot 1 holds the generator code (always, even when a string has
    none) and the other tokens follow in order. With `pool_pairs`, an element or `+` in the Wyckoff segment and
    an amount in the composition segment join the slot of the token before them.
    """
    ids, segments, mask = batch.ids, batch.segments, batch.mask
    is_gen, joins = _pooled_tokens(ids, segments, config)
    is_gen = mask & is_gen
    starts = mask & ~is_gen & ~joins
    rank = starts.cumsum(1) - 1  # slot among the non-generator slots; joining tokens share their start's
    n_slots = starts.sum(1)
    if config.pool_generators:
        rank = torch.where(is_gen, 1, rank + (rank >= 1).long())
        n_slots = n_slots + 1
    return torch.where(mask, rank, -1), is_gen, n_slots


def slot_counts(table: TokenTable, config: ModelConfig) -> np.ndarray:
    """`slot_layout`'s slots per row (B,), from the unpadded table (to sort strings before any batch is padded)."""
    is_gen, joins = _pooled_tokens(table.ids, table.segments, config)
    row = np.repeat(np.arange(len(table)), table.lengths)
    starts = ~is_gen & ~joins
    return np.bincount(row, weights=starts, minlength=len(table)).astype(np.int64) + int(config.pool_generators)


def _pooled_tokens(ids, segments, config: ModelConfig):
    """Which tokens share a slot (numpy arrays or torch tensors alike, any shape): generator characters, pooled
    into the code's slot (with `pool_generators`), and the tokens that join the slot of the token before them
    (with `pool_pairs`: an element or `+` in the Wyckoff segment, an amount in the composition segment)."""
    none = ids != ids  # all False, of the input's kind and shape
    is_gen = none
    if config.pool_generators:
        first, count = generator_id_range()
        is_gen = (segments == 0) & (ids >= first) & (ids < first + count)
    joins = none
    if config.pool_pairs:
        (element, n_elements), (amount, n_amounts) = element_id_range(), amount_id_range()
        on_orbit = (segments == 1) & (((ids >= element) & (ids < element + n_elements)) | (ids == MIXED_ID))
        joins = on_orbit | ((segments == 2) & (ids >= amount) & (ids < amount + n_amounts))
    return is_gen, joins


class MaskedLMHead(nn.Module):
    """Predicts the original token at masked positions; the output matrix is tied to the token embeddings."""

    def __init__(self, config: ModelConfig, embedding: nn.Embedding):
        super().__init__()
        self.transform = nn.Sequential(
            nn.Linear(config.d_model, config.d_model), nn.GELU(), nn.LayerNorm(config.d_model)
        )
        self.embedding = embedding
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.transform(hidden) @ self.embedding.weight.T + self.bias  # (..., V)


class CloudModel(nn.Module):
    """Encoder + masked-LM head (pre-training) + property and Debye heads (fine-tuning)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.mlm = MaskedLMHead(config, self.encoder.tokens)
        n_out = 2 * len(config.properties) + 2  # value and scale per property; log θ_D and the Cv scale
        self.head = nn.Sequential(
            nn.Linear(config.d_model, config.d_model),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.d_model, n_out),
        )
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def pooled(self, batch: Batch) -> torch.Tensor:
        return self.encoder(batch, cls_only=True)[0][:, 0]  # (B, D), the [CLS] position

    def mlm_logits(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, W, V) and the input position of each slot (B, W), -1 for the pooled generator."""
        hidden, source = self.encoder(batch)
        return self.mlm(hidden), source

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Standardised outputs: per property `value`, `log_scale` (B,), plus `log_theta` (B,) in kelvin."""
        out = self.head(self.pooled(batch)).float()  # (B, 2P + 3)
        P = len(self.config.properties)
        result = {}
        for i, name in enumerate(self.config.properties):
            result[name] = out[:, i]
            result[f"{name}_log_scale"] = out[:, P + i]
        c = self.config
        result["log_theta"] = c.log_theta_mean + c.log_theta_std * out[:, 2 * P]
        result["cv_log_scale"] = out[:, 2 * P + 1]
        return result

    def predict(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Physical units: properties and their `_std`, `debye_temperature` (K), `cv_305K` and its `_std`.

        The θ_D uncertainty is the Cv one carried through the Debye curve by whoever needs it (inference)."""
        out = self(batch)
        c = self.config
        result = {}
        factor = c.sigma_calibration
        for name in c.properties:
            mean, std = c.target_mean.get(name, 0.0), c.target_std.get(name, 1.0)
            result[name] = mean + std * out[name]
            # Laplace scale b -> sigma = sqrt(2) b, times the validation calibration factor.
            result[f"{name}_std"] = std * math.sqrt(2) * out[f"{name}_log_scale"].exp() * factor.get(name, 1.0)
        theta = out["log_theta"].exp()
        result["debye_temperature"] = theta
        result["cv_305K"] = debye_cv(theta, torch.tensor(DEBYE_FIT_TEMPERATURE, device=theta.device))
        result["cv_305K_std"] = math.sqrt(2) * out["cv_log_scale"].exp() * factor.get("cv_305K", 1.0)
        return result

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
