"""Random small transformers written the ways people write attention (test helper for the fuzzer and
the spelling tests).

``BlockSpec`` says how every block of a stack spells its attention: the product (SDPA, ``matmul``,
``bmm``, ``einsum``, ``baddbmm`` with the bias folded in), where the scale goes (on the scores, on q,
on k, on both), the padding mask (additive, ``masked_fill`` of ``mask == 0`` or of ``~mask`` with -inf
or the dtype's minimum, ``where``), an ALiBi bias computed once in the top-level forward and passed
down, a causal mask as a bool tensor (``tril`` of ones, ``arange`` comparison, a registered buffer)
or SDPA's flag, a float32 upcast around the softmax, fused or separate q/k/v, MHA/GQA/MQA, pre- or
post-norm. ``Net(spec)`` is plain PyTorch: ``forward(x, pad=None) -> y``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

from tcomp.verify import eps, reference_model, rel_error, to_dtype

PRODUCTS = ("sdpa", "matmul", "bmm", "einsum", "baddbmm")
SCALES = ("mul", "div", "q", "k", "qk")  # on the scores (times or divided), on q, on k, sqrt on each
PADS = (None, "additive", "masked_fill_eq0", "masked_fill_not", "where")
# "flag": SDPA's is_causal (else a tril mask); "additive": 0 / fill above the diagonal, added to the scores
CAUSALS = (None, "tril", "arange", "buffer", "flag", "additive")
UPCASTS = (None, "float", "dtype")  # scores.float().softmax(-1).to(dtype); F.softmax(..., dtype=float32)
MAX_LEN = 32


@dataclass(frozen=True)
class BlockSpec:
    product: str = "matmul"
    scale: str = "mul"
    scale_last: bool = False  # a scale on the scores comes after the bias and the masks
    pad: str | None = None
    fill: str = "-inf"  # "-inf" or "min" (torch.finfo(dtype).min) for the bool masks
    alibi: bool = False
    causal: str | None = None
    upcast: str | None = None
    heads: int = 4
    kv_heads: int = 4
    head_dim: int = 8
    fused_qkv: bool = True
    gqa_expand: bool = False  # repeat kv heads HF's way (expand + reshape) instead of repeat_interleave
    pre_norm: bool = True
    layers: int = 2
    dtype: torch.dtype = torch.float32

    @property
    def dim(self) -> int:
        return self.heads * self.head_dim


class Attention(nn.Module):
    def __init__(self, s: BlockSpec) -> None:
        super().__init__()
        self.s = s
        kv = s.kv_heads * s.head_dim
        if s.fused_qkv:
            self.qkv = nn.Linear(s.dim, s.dim + 2 * kv)
        else:
            self.q, self.k, self.v = nn.Linear(s.dim, s.dim), nn.Linear(s.dim, kv), nn.Linear(s.dim, kv)
        self.o = nn.Linear(s.dim, s.dim)
        if s.causal == "buffer":
            self.register_buffer(
                "tri", torch.ones(MAX_LEN, MAX_LEN, dtype=torch.bool).tril(), persistent=False
            )

    def forward(self, x: torch.Tensor, alibi: torch.Tensor | None, pad: torch.Tensor | None) -> torch.Tensor:
        s = self.s
        b, n, _ = x.shape
        kv = s.kv_heads * s.head_dim
        if s.fused_qkv:
            q, k, v = self.qkv(x).split([s.dim, kv, kv], dim=-1)
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)
        q = q.view(b, n, s.heads, s.head_dim).transpose(1, 2)
        k = k.view(b, n, s.kv_heads, s.head_dim).transpose(1, 2)
        v = v.view(b, n, s.kv_heads, s.head_dim).transpose(1, 2)
        keep = self._causal(n, x.device)
        if s.product == "sdpa":
            out = self._sdpa(q, k, v, alibi, pad, keep)
        else:
            k, v = self._repeat(k), self._repeat(v)
            out = self._eager(q, k, v, alibi, pad, keep)
        return self.o(out.transpose(1, 2).reshape(b, n, s.dim))

    def _repeat(self, t: torch.Tensor) -> torch.Tensor:
        s = self.s
        rep = s.heads // s.kv_heads
        if rep == 1:
            return t
        if s.gqa_expand:
            b, h, n, d = t.shape
            return t[:, :, None].expand(b, h, rep, n, d).reshape(b, h * rep, n, d)
        return t.repeat_interleave(rep, dim=1)

    def _causal(self, n: int, device) -> torch.Tensor | None:
        kind = self.s.causal
        if kind is None or (kind == "flag" and self.s.product == "sdpa"):
            return None
        if kind == "arange":
            i = torch.arange(n, device=device)
            return i[:, None] >= i[None, :]
        if kind == "buffer":
            return self.tri[:n, :n]
        return torch.ones(n, n, dtype=torch.bool, device=device).tril()

    def _sdpa(self, q, k, v, alibi, pad, keep):
        s = self.s
        floats = [
            t for t in (alibi, _additive(pad, q.dtype) if s.pad == "additive" else None) if t is not None
        ]
        if s.causal == "additive":
            floats.append(self._additive_causal(keep, q.dtype))
            keep = None
        bools = [t for t in (None if s.pad in (None, "additive") else pad.bool(), keep) if t is not None]
        flag = s.causal == "flag" and not floats and not bools
        if s.causal == "flag" and not flag:  # is_causal cannot go with a mask: the triangle joins it
            bools.append(torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril())
        mask = None
        if floats:
            mask = floats[0] if len(floats) == 1 else floats[0] + floats[1]
            for m in bools:
                mask = mask.masked_fill(~m, float("-inf"))
        elif bools:
            mask = bools[0] if len(bools) == 1 else bools[0] & bools[1]
        scale, q, k = self._operand_scale(q, k)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=flag, scale=scale, enable_gqa=s.heads != s.kv_heads
        )

    def _operand_scale(self, q, k):
        """(scale left for the scores, q, k): the scale moved onto q and/or k where the spec says."""
        s = self.s
        c = 1.0 / math.sqrt(s.head_dim)
        if s.scale == "q":
            return 1.0, q * c, k
        if s.scale == "k":
            return 1.0, q, k * c
        if s.scale == "qk":
            r = s.head_dim**-0.25
            return 1.0, q * r, k * r
        return None if s.product == "sdpa" else c, q, k

    def _eager(self, q, k, v, alibi, pad, keep):
        s = self.s
        b, h, n, d = q.shape
        scale, q, k = self._operand_scale(q, k)
        if s.product == "baddbmm":  # Bloom: the ALiBi bias (or nothing) folded into the product
            base = alibi.expand(b, h, n, n).reshape(b * h, n, n) if s.alibi else q.new_zeros(b * h, n, n)
            scores = torch.baddbmm(
                base, q.reshape(b * h, n, d), k.reshape(b * h, n, d).transpose(1, 2),
                beta=1.0 if s.alibi else 0.0, alpha=scale,
            ).view(b, h, n, n)  # fmt: skip
        else:
            if s.product == "bmm":
                scores = torch.bmm(q.reshape(b * h, n, d), k.reshape(b * h, n, d).transpose(1, 2)).view(
                    b, h, n, n
                )
            elif s.product == "einsum":
                scores = torch.einsum("bhqd,bhkd->bhqk", q, k)
            else:
                scores = q @ k.transpose(-2, -1)
            if scale != 1.0 and not s.scale_last:
                scores = scores / math.sqrt(d) if s.scale == "div" else scores * scale
            if alibi is not None:
                scores = scores + alibi
        if pad is not None:
            scores = self._pad(scores, pad)
        if keep is not None and s.causal == "additive":
            scores = scores + self._additive_causal(keep, scores.dtype)
        elif keep is not None:
            scores = scores.masked_fill(~keep, self._fill(scores))
        if scale != 1.0 and s.scale_last and s.product != "baddbmm":  # the bias and masks scaled too
            scores = scores / math.sqrt(d) if s.scale == "div" else scores * scale
        if s.upcast == "float":
            p = scores.float().softmax(-1).to(q.dtype)
        elif s.upcast == "dtype":
            p = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        else:
            p = scores.softmax(dim=-1)
        if s.product == "bmm" or s.product == "baddbmm":
            return torch.bmm(p.reshape(b * h, n, n), v.reshape(b * h, n, d)).view(b, h, n, d)
        if s.product == "einsum":
            return torch.einsum("bhqk,bhkd->bhqd", p, v)
        return p @ v

    def _fill(self, scores: torch.Tensor) -> float:
        return float("-inf") if self.s.fill == "-inf" else torch.finfo(scores.dtype).min

    def _additive_causal(self, keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        fill = float("-inf") if self.s.fill == "-inf" else torch.finfo(dtype).min
        return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, fill)

    def _pad(self, scores: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        kind = self.s.pad
        if kind == "additive":
            return scores + _additive(pad, scores.dtype)
        if kind == "masked_fill_eq0":
            return scores.masked_fill(pad == 0, self._fill(scores))
        if kind == "masked_fill_not":
            return scores.masked_fill(~pad.bool(), self._fill(scores))
        return torch.where(pad.bool(), scores, torch.tensor(self._fill(scores), dtype=scores.dtype))


def _additive(pad: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Hugging Face's extended mask: 0 where kept, the dtype's minimum where padded."""
    return (1.0 - pad.to(dtype)) * torch.finfo(dtype).min


class Block(nn.Module):
    def __init__(self, s: BlockSpec) -> None:
        super().__init__()
        self.attn, self.pre_norm = Attention(s), s.pre_norm
        self.ln1, self.ln2 = nn.LayerNorm(s.dim), nn.LayerNorm(s.dim)
        self.mlp = nn.Sequential(nn.Linear(s.dim, 2 * s.dim), nn.GELU(), nn.Linear(2 * s.dim, s.dim))

    def forward(self, x, alibi, pad):
        if self.pre_norm:
            x = x + self.attn(self.ln1(x), alibi, pad)
            return x + self.mlp(self.ln2(x))
        x = self.ln1(x + self.attn(x, alibi, pad))
        return self.ln2(x + self.mlp(x))


class Net(nn.Module):
    """``spec.layers`` blocks; the ALiBi bias and the padding mask's broadcast form are made once here
    and passed down to every block."""

    def __init__(self, s: BlockSpec) -> None:
        super().__init__()
        self.s = s
        self.blocks = nn.ModuleList(Block(s) for _ in range(s.layers))
        self.register_buffer(
            "slopes", torch.tensor([2.0 ** (-8 * (i + 1) / s.heads) for i in range(s.heads)])
        )

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        n = x.shape[1]
        alibi = None
        if self.s.alibi:  # (1, H, N, N): -slope * distance to the key, computed once for all layers
            pos = torch.arange(n, device=x.device)
            dist = (pos[None, :] - pos[:, None]).abs().to(x.dtype)
            alibi = -(self.slopes.to(x.dtype)[:, None, None] * dist)[None]
        pad4 = pad[:, None, None, :] if pad is not None else None
        for blk in self.blocks:
            x = blk(x, alibi, pad4)
        return x


def build(spec: BlockSpec, seed: int = 0) -> Net:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Net(spec).eval().to(spec.dtype)


def inputs(spec: BlockSpec, batch: int, seq: int, seed: int) -> tuple:
    """Fresh random activations, and a 0/1 padding mask (key 0 always kept) when the spec masks."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, seq, spec.dim, generator=g).to(spec.dtype)
    if spec.pad is None:
        return (x,)
    pad = (torch.rand(batch, seq, generator=g) > 0.3).to(torch.int64)
    pad[:, 0] = 1
    return (x, pad)


@st.composite
def specs(draw, dtypes=(torch.float32, torch.float16, torch.bfloat16)) -> BlockSpec:
    """A random spelling: every product, scale placement, mask, bias, causal form, head layout."""
    product = draw(st.sampled_from(PRODUCTS))
    heads = draw(st.sampled_from([1, 2, 4]))
    return BlockSpec(
        product=product,
        scale=draw(st.sampled_from(SCALES)),
        scale_last=draw(st.booleans()),
        pad=draw(st.sampled_from(PADS)),
        fill=draw(st.sampled_from(["-inf", "min"])),
        alibi=draw(st.booleans()),
        causal=draw(st.sampled_from(CAUSALS)),
        upcast=None if product == "sdpa" else draw(st.sampled_from(UPCASTS)),
        heads=heads,
        kv_heads=draw(st.sampled_from([h for h in (1, 2, heads) if heads % h == 0])),
        head_dim=draw(st.sampled_from([8, 16, 32, 64])),
        fused_qkv=draw(st.booleans()),
        gqa_expand=draw(st.booleans()),
        pre_norm=draw(st.booleans()),
        layers=draw(st.integers(1, 3)),
        dtype=draw(st.sampled_from(dtypes)),
    )


def state_hash(model: nn.Module) -> str:
    """A digest of every tensor of the model's state dict (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def fp_error(fn, model: nn.Module, args: tuple) -> tuple[float, float]:
    """(error of ``fn``, error of ``model`` itself) on ``args``, each relative to the model in float64."""
    ref = reference_model(model)
    with torch.no_grad():
        want = ref(*to_dtype(args, torch.float64))
        return rel_error(fn(*args), want), rel_error(model(*args), want)


def assert_fp_equivalent(fn, model: nn.Module, args: tuple, dtype: torch.dtype) -> None:
    """FP_EQUIVALENT on fresh inputs: no worse than 4x the model's own error in its dtype (16 ulp at least)."""
    got, own = fp_error(fn, model, args)
    assert got <= max(4 * own, 16 * eps(dtype)), (got, own)
