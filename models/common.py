"""Pieces shared by the zoo models: one attention function with two implementations, and the MLP.

``attention(q, k, v, impl=...)`` computes softmax attention either through
``torch.nn.functional.scaled_dot_product_attention`` (``impl="sdpa"``) or spelled out as
``softmax(q @ k.transpose(-2, -1) * scale + bias) @ v`` (``impl="eager"``). Both give the same
numbers up to float rounding; the two spellings exist so a compiler meets both forms.

Everything here is plain PyTorch and traceable by ``torch.export.export(strict=False)`` with dynamic
batch and sequence dims: masks are built from ``torch.arange`` of the runtime sizes, and no Python
branch looks at tensor values.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ATTN_IMPLS = ("sdpa", "eager")


def check_attn_impl(impl: str) -> str:
    """Return ``impl`` if it names a known attention implementation, else raise ``ValueError``."""
    if impl not in ATTN_IMPLS:
        raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {impl!r}")
    return impl


def causal_keep(n: int, m: int, device: torch.device | None = None) -> Tensor:
    """Boolean (n, m) matrix, True where query i may attend key j (j <= i + m - n).

    ``n`` and ``m`` may be symbolic sizes under torch.export: the matrix comes from ``torch.arange``.
    """
    i = torch.arange(n, device=device).unsqueeze(-1)
    j = torch.arange(m, device=device).unsqueeze(0)
    return j <= i + (m - n)


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    impl: str = "sdpa",
    mask: Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """Softmax attention over (B, H, N, D) queries and (B, Hkv, M, D) keys/values.

    mask: optional, broadcastable to (B, H, N, M); either bool (True = attend) or float (added to
        the scores: a bias, or a padding mask with -inf / ``finfo.min`` entries).
    causal: also forbid keys after the query (combined with ``mask`` when both are given).
    scale: multiplies the scores; ``None`` means ``1 / sqrt(D)``, ``1.0`` means unscaled (T5).
    Hkv may divide H (grouped-query attention): query head h reads key/value head h // (H // Hkv).
    Every query row must keep at least one key, or the row is NaN.
    """
    heads, kv_heads = q.shape[1], k.shape[1]
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads are not a multiple of {kv_heads} key/value heads")
    if impl == "sdpa":
        if causal and mask is not None:
            keep = causal_keep(q.shape[-2], k.shape[-2], q.device)
            if mask.dtype == torch.bool:
                mask = mask & keep
            else:
                mask = torch.where(keep, mask, torch.full_like(mask, float("-inf")))
            causal = False
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=dropout_p,
            is_causal=causal,
            scale=scale,
            enable_gqa=kv_heads != heads,
        )
    if impl != "eager":
        check_attn_impl(impl)
    if kv_heads != heads:
        k = k.repeat_interleave(heads // kv_heads, dim=1)
        v = v.repeat_interleave(heads // kv_heads, dim=1)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ k.transpose(-2, -1)
    if scale != 1.0:
        scores = scores * scale
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask
    if causal:
        keep = causal_keep(q.shape[-2], k.shape[-2], q.device)
        scores = scores.masked_fill(~keep, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    return probs @ v


class MLP(nn.Module):
    """Transformer feed-forward block: ``fc2(act(fc1(x)))`` with GELU, or SwiGLU
    (``fc2(silu(gate(x)) * fc1(x))``) when ``kind="swiglu"``."""

    def __init__(self, dim: int, hidden: int, *, kind: str = "gelu", bias: bool = True, dropout: float = 0.0):
        super().__init__()
        if kind not in ("gelu", "swiglu"):
            raise ValueError(f"mlp kind must be 'gelu' or 'swiglu', got {kind!r}")
        self.kind = kind
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.gate = nn.Linear(dim, hidden, bias=bias) if kind == "swiglu" else None
        self.fc2 = nn.Linear(hidden, dim, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        if self.gate is not None:
            h = F.silu(self.gate(x)) * self.fc1(x)
        else:
            h = F.gelu(self.fc1(x))
        return self.drop(self.fc2(h))


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, N, H*D) -> (B, H, N, D)."""
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, H, N, D) -> (B, N, H*D)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)
