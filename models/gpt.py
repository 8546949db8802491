"""A GPT-style causal decoder with a choice of position encodings.

Pre-norm blocks (LayerNorm or RMSNorm), causal multi-head attention with a fused qkv projection and
optional grouped-query attention (``n_kv_heads`` < ``heads``), a GELU or SwiGLU MLP, a final norm
and a language-model head (tied to the token embedding by default). ``forward(input_ids) -> logits``.

``position`` picks how positions enter:

- ``"learned"``: absolute learned embeddings added to the token embeddings (GPT-2);
- ``"rope"``: rotary embeddings on q and k (rotate-half form, as in GPT-NeoX/Llama);
- ``"alibi"``: a per-head linear distance penalty added to the scores (Press et al. 2021);
- ``"t5"``: a learned per-head bias over log-spaced relative-distance buckets (Raffel et al. 2019),
  computed once and shared by all layers as in T5.

Every position term is built from ``torch.arange`` of the runtime sequence length, so the model
exports with a dynamic sequence dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tcomp.models.common import MLP, attention, check_attn_impl, merge_heads

POSITIONS = ("rope", "alibi", "t5", "learned")


@dataclass
class GPTConfig:
    """Hyper-parameters of :class:`GPT`. Defaults make a tiny model for tests."""

    vocab_size: int = 256
    max_len: int = 128  # only bounds the "learned" position table
    dim: int = 64
    depth: int = 2
    heads: int = 4
    n_kv_heads: int | None = None  # None: = heads (plain multi-head attention)
    position: str = "rope"  # "rope" | "alibi" | "t5" | "learned"
    norm: str = "layernorm"  # "layernorm" | "rmsnorm"
    mlp: str = "gelu"  # "gelu" | "swiglu"
    mlp_ratio: int = 4
    bias: bool = True  # biases in the linear layers
    attn_impl: str = "sdpa"  # "sdpa" | "eager"
    attn_scale: float | None = None  # None: 1/sqrt(head_dim); 1.0: unscaled, as in T5
    rope_base: float = 10000.0
    t5_num_buckets: int = 32
    t5_max_distance: int = 128
    tie_embeddings: bool = True
    dropout: float = 0.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        check_attn_impl(self.attn_impl)
        if self.position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {self.position!r}")
        if self.norm not in ("layernorm", "rmsnorm"):
            raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {self.norm!r}")
        if self.dim % self.heads or self.heads % self.kv_heads:
            raise ValueError("dim must be a multiple of heads, and heads a multiple of n_kv_heads")
        if self.position == "rope" and self.head_dim % 2:
            raise ValueError("rope needs an even head_dim")

    @property
    def kv_heads(self) -> int:
        return self.heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


def make_norm(cfg: GPTConfig) -> nn.Module:
    """LayerNorm or RMSNorm over the model dim, as the config says."""
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
    return nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)


# ---------------------------------------------------------------- position terms


class RotaryEmbedding(nn.Module):
    """cos/sin tables of rotary embeddings for positions ``0..n-1``, (n, head_dim) each, in ``dtype``
    (computed in float32)."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, n: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        t = torch.arange(n, device=device, dtype=torch.float32)
        freqs = torch.outer(t, self.inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        if dtype == torch.float32:
            return emb.cos(), emb.sin()
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, H, N, D) queries or keys by their positions."""
    return x * cos + rotate_half(x) * sin


def alibi_slopes(heads: int) -> Tensor:
    """ALiBi's per-head slopes: a geometric sequence, interleaved when ``heads`` is not a power of 2."""

    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(heads).is_integer():
        return torch.tensor(power_of_2(heads))
    closest = 2 ** math.floor(math.log2(heads))
    extra = power_of_2(2 * closest)[0::2][: heads - closest]
    return torch.tensor(power_of_2(closest) + extra)


def t5_buckets(rel: Tensor, num_buckets: int, max_distance: int, bidirectional: bool = False) -> Tensor:
    """T5's relative-position buckets for ``rel = key_pos - query_pos`` (int tensor).

    Half the buckets hold exact small distances, the rest log-spaced distances up to ``max_distance``;
    a causal model (``bidirectional=False``) maps all future keys to bucket 0.
    """
    offset = torch.zeros_like(rel)
    n = -rel
    if bidirectional:
        num_buckets //= 2
        offset = (n < 0).long() * num_buckets
        n = n.abs()
    else:
        n = n.clamp(min=0)
    max_exact = num_buckets // 2
    large = (
        max_exact
        + (
            torch.log(n.float().clamp(min=1.0) / max_exact)
            / math.log(max_distance / max_exact)
            * (num_buckets - max_exact)
        ).long()
    )
    large = large.clamp(max=num_buckets - 1)
    return offset + torch.where(n < max_exact, n, large)


class T5Bias(nn.Module):
    """Learned per-head relative-position bias, (1, H, n, n)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.num_buckets = cfg.t5_num_buckets
        self.max_distance = cfg.t5_max_distance
        self.table = nn.Embedding(cfg.t5_num_buckets, cfg.heads)

    def forward(self, n: int, device: torch.device) -> Tensor:
        pos = torch.arange(n, device=device)
        buckets = t5_buckets(pos[None, :] - pos[:, None], self.num_buckets, self.max_distance)
        return self.table(buckets).permute(2, 0, 1).unsqueeze(0)


# ---------------------------------------------------------------- blocks


class GPTAttention(nn.Module):
    """Causal self-attention with one fused q/k/v projection and optional grouped-query heads."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.qkv = nn.Linear(cfg.dim, (cfg.heads + 2 * cfg.kv_heads) * cfg.head_dim, bias=cfg.bias)
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=cfg.bias)

    def forward(
        self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None, bias: Tensor | None = None
    ) -> Tensor:
        c = self.cfg
        b, n, _ = x.shape
        qkv = self.qkv(x).view(b, n, c.heads + 2 * c.kv_heads, c.head_dim).transpose(1, 2)
        q, k, v = qkv.split([c.heads, c.kv_heads, c.kv_heads], dim=1)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        p = c.dropout if self.training else 0.0
        y = attention(q, k, v, impl=c.attn_impl, mask=bias, causal=True, scale=c.attn_scale, dropout_p=p)
        return self.proj(merge_heads(y))


class GPTBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.norm1 = make_norm(cfg)
        self.attn = GPTAttention(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.norm2 = make_norm(cfg)
        self.mlp = MLP(cfg.dim, cfg.mlp_ratio * cfg.dim, kind=cfg.mlp, bias=cfg.bias, dropout=cfg.dropout)

    def forward(
        self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None, bias: Tensor | None = None
    ) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x), rope, bias))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    """Causal language model: ``forward(input_ids: (B, N)) -> logits (B, N, vocab_size)``."""

    def __init__(self, cfg: GPTConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or GPTConfig()
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.dim) if cfg.position == "learned" else None
        self.rope = RotaryEmbedding(cfg.head_dim, cfg.rope_base) if cfg.position == "rope" else None
        self.t5_bias = T5Bias(cfg) if cfg.position == "t5" else None
        if cfg.position == "alibi":
            self.register_buffer("alibi_slopes", alibi_slopes(cfg.heads), persistent=False)
        else:
            self.alibi_slopes = None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(GPTBlock(cfg) for _ in range(cfg.depth))
        self.norm = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    def position_bias(self, n: int, device: torch.device, dtype: torch.dtype) -> Tensor | None:
        """The additive (1, H, n, n) score bias of ALiBi or T5, or None for the other encodings."""
        if self.t5_bias is not None:
            return self.t5_bias(n, device).to(dtype)
        if self.alibi_slopes is not None:
            pos = torch.arange(n, device=device, dtype=dtype)
            distance = pos[None, :] - pos[:, None]  # key - query: <= 0 where attended
            return (self.alibi_slopes.to(dtype)[:, None, None] * distance).unsqueeze(0)
        return None

    def forward(self, input_ids: Tensor) -> Tensor:
        n = input_ids.shape[1]
        x = self.tok_emb(input_ids)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(n, device=input_ids.device))
        x = self.drop(x)
        rope = self.rope(n, x.device, x.dtype) if self.rope is not None else None
        bias = self.position_bias(n, x.device, x.dtype)
        for block in self.blocks:
            x = block(x, rope, bias)
        return self.lm_head(self.norm(x))
