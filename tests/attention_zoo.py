"""Random attention modules in every spelling canonicalize must recognise (test helper).

``AttnSpec`` describes one site; ``build(spec)`` returns a module ``forward(x) -> y`` with a q/k/v
projection, the attention written in the chosen spelling, and an output projection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SPELLINGS = ("sdpa", "matmul_div", "matmul_mul", "prescaled_q", "bmm3d", "f_softmax_fp32")
MASKS = (None, "bool", "additive", "masked_fill_inf", "masked_fill_min", "where")


@dataclass(frozen=True)
class AttnSpec:
    spelling: str = "sdpa"
    heads: int = 2
    kv_heads: int = 2
    head_dim: int = 8
    mask: str | None = None
    bias: bool = False  # learned per-head additive bias (1, H, N, N), sliced to the sequence
    causal: bool = False
    dropout: float = 0.1  # inactive in eval; must not block the rewrite
    max_len: int = 32


class Attn(nn.Module):
    def __init__(self, spec: AttnSpec):
        super().__init__()
        self.spec = s = spec
        dim = s.heads * s.head_dim
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * s.kv_heads * s.head_dim)
        self.o = nn.Linear(dim, dim)
        self.drop = nn.Dropout(s.dropout)
        if s.bias:
            self.rel = nn.Parameter(torch.randn(1, s.heads, s.max_len, s.max_len) * 0.5)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        s = self.spec
        b, n, _ = x.shape
        q = self.q(x).view(b, n, s.heads, s.head_dim).transpose(1, 2)
        k, v = self.kv(x).view(b, n, 2, s.kv_heads, s.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        keep = None  # bool (B|1, 1, N, N), True = attend
        if pad is not None:
            keep = pad[:, None, None, :].bool()
        if s.causal and s.spelling != "sdpa":
            tri = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
            keep = tri if keep is None else keep & tri
        bias = self.rel[:, :, :n, :n] if s.bias else None
        if s.spelling == "sdpa":
            return self.o(self._sdpa(q, k, v, keep, bias).transpose(1, 2).reshape(b, n, -1))
        rep = s.heads // s.kv_heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scale = 1.0 / math.sqrt(s.head_dim)
        if s.spelling == "bmm3d":
            q3, k3, v3 = (t.reshape(b * s.heads, n, s.head_dim) for t in (q, k, v))
            scores = torch.bmm(q3, k3.transpose(1, 2)) * scale
            scores = scores.view(b, s.heads, n, n)
        elif s.spelling == "prescaled_q":
            scores = (q * scale) @ k.transpose(-2, -1)
        elif s.spelling == "matmul_mul":
            scores = torch.matmul(q, k.transpose(-1, -2)) * scale
        else:
            scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(s.head_dim)
        if bias is not None:
            scores = scores + bias
        scores = self._mask(scores, keep)
        if s.spelling == "f_softmax_fp32":
            p = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        else:
            p = scores.softmax(-1)
        p = self.drop(p)
        if s.spelling == "bmm3d":
            out = torch.bmm(p.reshape(b * s.heads, n, n), v.reshape(b * s.heads, n, s.head_dim))
            out = out.view(b, s.heads, n, s.head_dim)
        else:
            out = p @ v
        return self.o(out.transpose(1, 2).reshape(b, n, -1))

    def _sdpa(self, q, k, v, keep, bias):
        s = self.spec
        mask = None
        if keep is not None:
            mask = (
                keep
                if s.mask != "additive"
                else torch.zeros(keep.shape, dtype=q.dtype).masked_fill(~keep, float("-inf"))
            )
        if bias is not None:
            add = (
                bias
                if mask is None
                else (bias.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else bias + mask)
            )
            mask = add
        gqa = s.kv_heads != s.heads
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.drop.p if self.training else 0.0,
            is_causal=s.causal and mask is None,
            enable_gqa=gqa,
        )

    def _mask(self, scores, keep):
        if keep is None:
            return scores
        kind = self.spec.mask or "masked_fill_inf"
        if kind in ("masked_fill_inf", "bool"):
            return scores.masked_fill(~keep, float("-inf"))
        if kind == "masked_fill_min":
            return scores.masked_fill(keep.logical_not(), torch.finfo(scores.dtype).min)
        if kind == "where":
            return torch.where(keep, scores, torch.tensor(float("-inf"), dtype=scores.dtype))
        return scores + torch.zeros(keep.shape, dtype=scores.dtype).masked_fill(
            ~keep, torch.finfo(scores.dtype).min
        )


class Stack(nn.Module):
    """``layers`` attention blocks with residuals; ``forward(x, pad=None)``."""

    def __init__(self, spec: AttnSpec, layers: int = 2):
        super().__init__()
        self.blocks = nn.ModuleList(Attn(spec) for _ in range(layers))
        self.norm = nn.LayerNorm(spec.heads * spec.head_dim)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        for blk in self.blocks:
            x = self.norm(x + blk(x, pad))
        return x


def build(spec: AttnSpec, layers: int = 2, seed: int = 0) -> Stack:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Stack(spec, layers).eval()


def inputs(spec: AttnSpec, batch: int, seq: int, padded: bool, seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, seq, spec.heads * spec.head_dim, generator=g)
    if not padded:
        return (x,)
    pad = torch.rand(batch, seq, generator=g) > 0.3
    pad[:, 0] = True  # every query sees at least one key
    return (x, pad.to(torch.int64))
