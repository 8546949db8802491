"""A small Vision Transformer (ViT, Dosovitskiy et al. 2020).

Patch embedding by a strided convolution, a learned CLS token, learned position embeddings,
pre-LN blocks (multi-head attention with a fused qkv projection, GELU MLP), a final LayerNorm and a
linear classification head on the CLS token. ``forward(pixels) -> logits``.

The image size is fixed by the position embeddings, so only the batch dim is dynamic under
``torch.export``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tcomp.models.common import MLP, attention, check_attn_impl, merge_heads


@dataclass
class ViTConfig:
    """Hyper-parameters of :class:`ViT`. Defaults make a tiny model for tests."""

    image_size: int = 32
    patch_size: int = 8
    channels: int = 3
    dim: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: int = 4
    num_classes: int = 10
    attn_impl: str = "sdpa"  # "sdpa" | "eager"
    dropout: float = 0.0
    ln_eps: float = 1e-6

    def __post_init__(self) -> None:
        check_attn_impl(self.attn_impl)
        if self.image_size % self.patch_size:
            raise ValueError("image_size must be a multiple of patch_size")
        if self.dim % self.heads:
            raise ValueError("dim must be a multiple of heads")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class ViTAttention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (timm style)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.heads = cfg.heads
        self.impl = cfg.attn_impl
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        p = self.dropout if self.training else 0.0
        return self.proj(merge_heads(attention(q, k, v, impl=self.impl, dropout_p=p)))


class ViTBlock(nn.Module):
    """Pre-LN block: ``x + attn(ln1(x))`` then ``x + mlp(ln2(x))``."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)
        self.attn = ViTAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)
        self.mlp = MLP(cfg.dim, cfg.mlp_ratio * cfg.dim, dropout=cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    """Vision Transformer classifier: ``forward(pixels: (B, C, H, W)) -> logits (B, num_classes)``."""

    def __init__(self, cfg: ViTConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or ViTConfig()
        self.patch_embed = nn.Conv2d(cfg.channels, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.randn(1, 1, cfg.dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, cfg.num_patches + 1, cfg.dim) * 0.02)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(ViTBlock(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)

    def forward(self, pixels: Tensor) -> Tensor:
        x = self.patch_embed(pixels).flatten(2).transpose(1, 2)  # (B, P, dim)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = self.drop(torch.cat([cls, x], dim=1) + self.pos_embed)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])
