"""Rotary position embedding fused to one generated kernel: the rotate-half chain in its spellings
(slices or chunk, either operand order, partial rotary on a slice of the head, broadcast cos/sin,
transposed q/k views) is found, replaced by one launch, and stays FP_EQUIVALENT to float64."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

import tcomp  # noqa: E402
from tcomp.backends.triton.rotary import rotary, rotary_to_cache  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def rotate_half(x, spelling: str):
    if spelling == "chunk":
        a, b = x.chunk(2, dim=-1)
    else:
        h = x.shape[-1] // 2
        a, b = x[..., :h], x[..., h:]
    return torch.cat((-b, a), dim=-1)


class Rope(torch.nn.Module):
    """Attention-style q/k projections with RoPE applied to (b, heads, n, d) transposed views."""

    def __init__(self, heads: int, d: int, spelling: str, swap: bool, partial: bool):
        super().__init__()
        self.heads, self.d, self.spelling, self.swap, self.partial = heads, d, spelling, swap, partial
        self.q = torch.nn.Linear(heads * d, heads * d, bias=False)
        self.k = torch.nn.Linear(heads * d, d, bias=False)  # one kv head (MQA): another shape
        rd = d // 2 if partial else d
        self.register_buffer("inv", 1.0 / 10000 ** (torch.arange(0, rd, 2).float() / rd))

    def embed(self, x, cos, sin):
        if self.partial:
            rd = cos.shape[-1]
            x, rest = x[..., :rd], x[..., rd:]
        y = (rotate_half(x, self.spelling) * sin + x * cos) if self.swap else (x * cos + rotate_half(x, self.spelling) * sin)
        return torch.cat((y, rest), dim=-1) if self.partial else y

    def forward(self, h, pos):
        b, n, _ = h.shape
        q = self.q(h).view(b, n, self.heads, self.d).transpose(1, 2)
        k = self.k(h).view(b, n, 1, self.d).transpose(1, 2)
        f = pos[..., None].float() * self.inv
        emb = torch.cat((f, f), dim=-1)
        cos, sin = emb.cos().to(h.dtype)[:, None], emb.sin().to(h.dtype)[:, None]
        return self.embed(q, cos, sin), self.embed(k, cos, sin)


@settings(max_examples=8, deadline=None)
@given(
    spelling=st.sampled_from(["slice", "chunk"]), swap=st.booleans(), partial=st.booleans(),
    d=st.sampled_from([16, 32, 64]), n=st.integers(1, 6), dtype=st.sampled_from([torch.float32, torch.float16]),
    seed=st.integers(0, 2**16),
)  # fmt: skip
def test_rope_spellings_fuse_to_one_kernel_each(spelling, swap, partial, d, n, dtype, seed):
    torch.manual_seed(seed)
    model = Rope(3, d, spelling, swap, partial).eval().to(DEVICE, dtype)
    h = torch.randn(2, n, 3 * d, device=DEVICE, dtype=dtype)
    pos = torch.randint(0, 4096, (2, n), device=DEVICE)
    fast = tcomp.optimize(model, (h, pos), target="h200", dynamic=False)
    rec = fast.report["fuse.triton.rotary"]
    assert rec.status == "applied" and rec.rewrites == 2, (rec.reason, rec.notes)
    assert rec.error <= rec.tolerance
    ops = [n.target for n in fast.graph_module.graph.nodes if n.op == "call_function"]
    assert ops.count(rotary) == 2 and torch.ops.aten.neg.default not in ops
    h2, pos2 = torch.randn_like(h), torch.randint(0, 4096, (2, n), device=DEVICE)
    with torch.no_grad():
        got, eager = fast(h2, pos2), model(h2, pos2)
    ref = model.double()(h2.double(), pos2)
    rel = lambda a, r: ((a.double() - r).norm() / r.norm()).item()  # noqa: E731
    for g, e, r in zip(got, eager, ref):
        assert g.dtype == dtype and not g.isnan().any()
        # as close to float64 as eager is (whose own cos/sin carry the fp32 or fp16 rounding)
        assert rel(g, r) <= 1.5 * rel(e, r) + (1e-6 if dtype == torch.float32 else 1e-3), (rel(g, r), rel(e, r))


def test_kernel_reads_strided_x_and_broadcast_cos_sin():
    """The launcher alone: a transposed view of x, cos/sin broadcast over batch and heads."""
    torch.manual_seed(1)
    x = torch.randn(2, 5, 4, 32, device=DEVICE).transpose(1, 2)  # (b, heads, n, d), not contiguous
    f = torch.randn(1, 1, 5, 16, device=DEVICE)
    cos, sin = torch.cat((f, f), -1).cos(), torch.cat((f, f), -1).sin()
    out = rotary(x, cos, sin, torch.float32)
    xd = x.double()
    ref = xd * cos.double() + torch.cat((-xd[..., 16:], xd[..., :16]), -1) * sin.double()
    assert out.shape == x.shape and out.stride() == x.stride()  # eager's layout
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-6


def test_a_product_used_elsewhere_keeps_the_chain():
    class Leaky(torch.nn.Module):
        def forward(self, x, cos, sin):
            a = x * cos
            return a + rotate_half(x, "slice") * sin, a  # the product is an output too

    x, cs = torch.randn(1, 2, 3, 8, device=DEVICE), torch.randn(1, 1, 3, 8, device=DEVICE)
    fast = tcomp.optimize(Leaky(), (x, cs, cs.sin()), target="h200", dynamic=False)
    assert fast.report["fuse.triton.rotary"].rewrites == 0
    with torch.no_grad():
        got, ref = fast(x, cs, cs.sin()), Leaky()(x, cs, cs.sin())
    assert all(torch.allclose(g, r, atol=1e-5) for g, r in zip(got, ref))


@settings(max_examples=8, deadline=None)
@given(
    d=st.sampled_from([16, 64]), dv=st.sampled_from([16, 48]), n=st.integers(1, 5), start=st.integers(0, 6),
    heads=st.integers(1, 3), with_v=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float16]),
    partial=st.booleans(), q_heads=st.sampled_from([0, 1, 4]), seed=st.integers(0, 2**16),
)
def test_rotary_to_cache_writes_the_slots_index_copy_would(d, dv, n, start, heads, with_v, dtype, partial, q_heads, seed):
    """Rotated keys and the values land in the cache slots ``position`` names, exactly where
    ``index_copy_`` puts ``rotary(k)`` and ``v`` (read from transposed views of one projection);
    every other slot is untouched, and the rotation is FP_EQUIVALENT to float64. Partial rotary:
    only the first half of each head rotates, the rest is copied as it is."""
    gen = torch.Generator().manual_seed(seed)
    b, m = 2, start + n + 3
    proj = torch.randn(b, n, heads * (d + dv), generator=gen, dtype=dtype).to(DEVICE)
    k = proj[..., : heads * d].view(b, n, heads, d).transpose(1, 2)
    v = proj[..., heads * d :].view(b, n, heads, dv).transpose(1, 2)
    r = d // 2 if partial else d
    ang = torch.rand(b, 1, n, r // 2, generator=gen, dtype=torch.float64) * 6
    cos, sin = torch.cat((ang.cos(), ang.cos()), -1), torch.cat((ang.sin(), ang.sin()), -1)
    cos, sin = cos.to(dtype).to(DEVICE), sin.to(dtype).to(DEVICE)
    k_cache = torch.randn(b, heads, m, d, generator=gen, dtype=dtype).to(DEVICE)
    v_cache = torch.randn(b, heads, m, dv, generator=gen, dtype=dtype).to(DEVICE)
    pos = torch.arange(start, start + n, device=DEVICE)
    want_k, want_v, v_before = k_cache.clone(), v_cache.clone(), v_cache.clone()
    k64 = k.double()
    kr = k64[..., :r]
    ref = kr * cos.double() + torch.cat((-kr[..., r // 2 :], kr[..., : r // 2]), -1) * sin.double()
    ref = torch.cat((ref, k64[..., r:]), -1)
    want_k.index_copy_(2, pos, ref.to(dtype))
    want_v.index_copy_(2, pos, v)
    q = torch.randn(b, n, q_heads, d, generator=gen, dtype=dtype).to(DEVICE).transpose(1, 2) if q_heads else None
    got_k, got_v, got_q = rotary_to_cache(
        k, cos, sin, k_cache, pos, v if with_v else None, v_cache if with_v else None, r if partial else None, q
    )
    if q is None:
        assert got_q is None
    else:  # the queries rotate in the same launch, into a tensor of their own layout
        q64 = q.double()
        qr = q64[..., :r]
        want_q = torch.cat((qr * cos.double() + torch.cat((-qr[..., r // 2 :], qr[..., : r // 2]), -1) * sin.double(),
                            q64[..., r:]), -1)  # fmt: skip
        assert got_q.shape == q.shape and got_q.stride() == q.stride()
        assert (got_q.double() - want_q).norm() / want_q.norm() < (1e-6 if dtype == torch.float32 else 2e-3)
    assert got_k is k_cache
    others = [j for j in range(m) if not start <= j < start + n]
    assert torch.equal(k_cache[:, :, others], want_k[:, :, others])
    err = (k_cache[:, :, start : start + n].double() - ref).norm() / ref.norm()
    assert err < (1e-6 if dtype == torch.float32 else 2e-3), err
    if with_v:
        assert got_v is v_cache and torch.equal(v_cache, want_v)
    else:
        assert got_v is None and torch.equal(v_cache, v_before)  # no values given: the value cache untouched
