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

**KV cache** (generation; the protocol of Hugging Face's ``Cache`` that ``tcomp.optimize`` drives):
``forward(input_ids, past_key_values=cache, cache_position=p, attention_mask=mask, position_ids=pos)``
runs the ``n`` new tokens ``input_ids`` (B, n) stored at cache slots ``p`` (n,) of a cache of ``M``
slots. Each attention layer ``i`` calls ``k, v = cache.update(k_new, v_new, i)`` with its new keys
and values (B, Hk, n, D) and attends over the returned whole cache (B, Hk, M, D) under ``mask``:
bool (B, 1, n, M), True where a query may read a slot (causality over slots and padding are in it;
no causal mask is added). Positions: rope and learned embeddings use ``pos`` (B, n), the count of
real tokens before each token (default: ``p``); ALiBi and T5 biases use slot distances
``j - p`` for key slots ``j = 0..M-1`` (equal to token distances between the real tokens of a
left-padded row, since its padding is masked out).
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

    def at(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos/sin at integer ``positions`` (P, n): (P, 1, n, head_dim) each, broadcast over heads."""
        freqs = positions[..., None].float() * self.inv_freq
        emb = torch.cat([freqs, freqs], dim=-1)[:, None]
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
    """Learned per-head relative-position bias: (1, H, n, n), or (1, H, n, M) from ``at``."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.num_buckets = cfg.t5_num_buckets
        self.max_distance = cfg.t5_max_distance
        self.table = nn.Embedding(cfg.t5_num_buckets, cfg.heads)

    def forward(self, n: int, device: torch.device) -> Tensor:
        pos = torch.arange(n, device=device)
        return self.at(pos, pos)

    def at(self, queries: Tensor, keys: Tensor) -> Tensor:
        """The bias of query positions (n,) over key positions (M,)."""
        buckets = t5_buckets(keys[None, :] - queries[:, None], self.num_buckets, self.max_distance)
        return self.table(buckets).permute(2, 0, 1).unsqueeze(0)


# ---------------------------------------------------------------- blocks


class GPTAttention(nn.Module):
    """Causal self-attention with one fused q/k/v projection and optional grouped-query heads.

    With a ``cache`` its keys and values go to ``cache.update(k, v, layer_idx)`` and the queries
    attend over the whole cache it returns, under ``mask`` (bool, or the float bias with the mask
    folded in) instead of a causal mask."""

    def __init__(self, cfg: GPTConfig, layer_idx: int = 0):
        super().__init__()
        self.cfg = cfg
        self.layer_idx = layer_idx
        self.qkv = nn.Linear(cfg.dim, (cfg.heads + 2 * cfg.kv_heads) * cfg.head_dim, bias=cfg.bias)
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=cfg.bias)

    def forward(
        self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None, bias: Tensor | None = None, cache=None
    ) -> Tensor:
        c = self.cfg
        b, n, _ = x.shape
        qkv = self.qkv(x).view(b, n, c.heads + 2 * c.kv_heads, c.head_dim).transpose(1, 2)
        q, k, v = qkv.split([c.heads, c.kv_heads, c.kv_heads], dim=1)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        p = c.dropout if self.training else 0.0
        y = attention(
            q, k, v, impl=c.attn_impl, mask=bias, causal=cache is None, scale=c.attn_scale, dropout_p=p
        )
        return self.proj(merge_heads(y))


class GPTBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``."""

    def __init__(self, cfg: GPTConfig, layer_idx: int = 0):
        super().__init__()
        self.norm1 = make_norm(cfg)
        self.attn = GPTAttention(cfg, layer_idx)
        self.drop = nn.Dropout(cfg.dropout)
        self.norm2 = make_norm(cfg)
        self.mlp = MLP(cfg.dim, cfg.mlp_ratio * cfg.dim, kind=cfg.mlp, bias=cfg.bias, dropout=cfg.dropout)

    def forward(
        self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None, bias: Tensor | None = None, cache=None
    ) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x), rope, bias, cache))
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    """Causal language model: ``forward(input_ids: (B, N)) -> logits (B, N, vocab_size)``; with a KV
    cache, the new tokens' logits (see the module docstring)."""

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
        self.blocks = nn.ModuleList(GPTBlock(cfg, i) for i in range(cfg.depth))
        self.norm = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    def position_bias(self, n: int, device: torch.device, dtype: torch.dtype) -> Tensor | None:
        """The additive (1, H, n, n) score bias of ALiBi or T5, or None for the other encodings."""
        pos = torch.arange(n, device=device)
        return self.relative_bias(pos, pos, dtype)

    def relative_bias(self, queries: Tensor, keys: Tensor, dtype: torch.dtype) -> Tensor | None:
        """ALiBi's or T5's (1, H, n, M) bias of query positions (n,) over key positions (M,)."""
        if self.t5_bias is not None:
            return self.t5_bias.at(queries, keys).to(dtype)
        if self.alibi_slopes is not None:
            distance = (keys[None, :] - queries[:, None]).to(dtype)  # key - query: <= 0 where attended
            return (self.alibi_slopes.to(dtype)[:, None, None] * distance).unsqueeze(0)
        return None

    def forward(
        self,
        input_ids: Tensor,
        past_key_values=None,
        cache_position: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
    ) -> Tensor:
        """Logits (B, n, vocab) of ``input_ids`` (B, n): the whole sequence, causal, without
        ``past_key_values``; the new tokens at slots ``cache_position`` of the KV cache with it."""
        n = input_ids.shape[1]
        x = self.tok_emb(input_ids)
        if past_key_values is None:
            if cache_position is not None or attention_mask is not None or position_ids is not None:
                raise ValueError(
                    "GPT.forward: cache_position, attention_mask and position_ids go with past_key_values (a KV "
                    "cache); without one the input is the whole sequence at positions 0..n-1"
                )
            pos = torch.arange(n, device=input_ids.device)
            rope = self.rope(n, x.device, x.dtype) if self.rope is not None else None
            bias = self.position_bias(n, x.device, x.dtype)
        else:
            if cache_position is None or attention_mask is None or attention_mask.dtype != torch.bool:
                raise ValueError(
                    "GPT.forward with past_key_values needs cache_position (n,) and a bool attention_mask "
                    "(B, 1, n, cache slots), True where a query may read a slot"
                )
            pos = cache_position[None] if position_ids is None else position_ids
            rope = self.rope.at(pos, x.dtype) if self.rope is not None else None
            slots = torch.arange(attention_mask.shape[-1], device=x.device)
            bias = self.relative_bias(cache_position, slots, x.dtype)
            bias = attention_mask if bias is None else torch.where(attention_mask, bias, float("-inf"))
        if self.pos_emb is not None:
            x = x + self.pos_emb(pos)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, rope, bias, past_key_values)
        return self.lm_head(self.norm(x))
