"""tcomp.cached_attention: attention over the first kv_len slots of a static KV cache."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from tcomp.dialect.attention import attention
from tcomp.dialect.cached_attention import cached_attention
from tcomp.verify import rel_error


@given(
    b=st.integers(1, 3), hk=st.sampled_from([1, 2]), rep=st.sampled_from([1, 2, 4]), n=st.integers(1, 3),
    m=st.integers(3, 12), d=st.sampled_from([4, 8]), per_row=st.booleans(), use_mask=st.booleans(),
    use_bias=st.booleans(), seed=st.integers(0, 2**16),
)  # fmt: skip
def test_equals_attention_over_the_valid_prefix_whatever_the_unread_slots_hold(
    b, hk, rep, n, m, d, per_row, use_mask, use_bias, seed
):
    g = torch.Generator().manual_seed(seed)
    h = hk * rep
    q = torch.randn(b, h, n, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, hk, m, d, generator=g, dtype=torch.float64)
    v = torch.randn(b, hk, m, d, generator=g, dtype=torch.float64)
    lens = torch.randint(1, m + 1, (b,) if per_row else (1,), generator=g)
    bias = torch.randn(b, 1, n, m, generator=g, dtype=torch.float64) if use_bias else None
    mask = (torch.rand(b, 1, n, m, generator=g) > 0.3) if use_mask else None
    kk, vv = k.clone(), v.clone()
    for r in range(b):  # garbage past kv_len: NaN and inf
        L = int(lens[r] if per_row else lens[0])
        kk[r, :, L:], vv[r, :, L:] = float("nan"), float("inf")
    out = cached_attention(q, kk, vv, bias, mask, 0.4, lens)
    assert torch.isfinite(out).all()
    for r in range(b):
        L = int(lens[r] if per_row else lens[0])
        ref = attention(
            q[r : r + 1], k[r : r + 1, :, :L], v[r : r + 1, :, :L],
            None if bias is None else bias[r : r + 1, ..., :L], None if mask is None else mask[r : r + 1, ..., :L],
            0.4, False,
        )  # fmt: skip
        assert rel_error(out[r : r + 1], ref) < 1e-12


def test_fake_kernel_and_cost_upper_bound():
    from tests.dialect.costing import io_bytes, static_cost

    q, k, v = torch.randn(2, 4, 1, 8), torch.randn(2, 2, 16, 8), torch.randn(2, 2, 16, 8)
    mask, lens = torch.rand(2, 1, 1, 16) > 0.2, torch.tensor([9])
    flops, nbytes = static_cost(lambda *t: cached_attention(t[0], t[1], t[2], None, t[3], 0.3, t[4]), (q, k, v, mask, lens))
    out = cached_attention(q, k, v, None, mask, 0.3, lens)
    assert nbytes == io_bytes((q, k, v, mask), out)  # the whole cache: the bound at a full cache
    assert flops > 0


def test_canonical_form_only_for_marked_cache_buffers():
    """canonicalize turns attention over a decoder step graph's cache buffers into the cache form,
    and leaves an ordinary attention alone."""
    from tcomp import meta
    from tcomp.dialect.cached_attention import CACHED_ATTENTION

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("k", torch.randn(1, 2, 8, 4))
            self.register_buffer("v", torch.randn(1, 2, 8, 4))

        def forward(self, q, kn, vn, cache_position, mask):
            self.k.index_copy_(2, cache_position, kn)
            self.v.index_copy_(2, cache_position, vn)
            return attention(q, self.k, self.v, None, mask, 0.5, False)

    args = (torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4), torch.tensor([3]),
            torch.arange(8)[None, None, None, :] <= 3)  # fmt: skip
    for marked in (True, False):
        gm = torch.export.export(Step(), args, strict=False).module()
        if marked:
            for n in gm.graph.nodes:
                if n.op == "get_attr" and n.target in ("k", "v"):
                    n.meta[meta.KV_CACHE] = {"layer": 0, "kind": n.target}
                if n.op == "placeholder" and n.name == "cache_position":
                    n.meta[meta.CACHE_POSITION] = True
        expected = Step()
        expected.load_state_dict(dict(gm.named_buffers()))
        want = expected(*args)
        (form,) = CACHED_ATTENTION.canonical_forms
        notes = form(gm)
        gm.recompile()
        assert len(notes) == (1 if marked else 0)
        assert sum(CACHED_ATTENTION.matches(n) for n in gm.graph.nodes) == (1 if marked else 0)
        assert rel_error(gm(*args), want) < 1e-6
