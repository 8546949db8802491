"""``tcomp.recurrent_linear_attention``, the cache form of linear attention: against a token-by-token
float64 loop written here independently (the running sums, one token at a time); splitting a
sequence into steps (a prefill, then decode steps, fresh at position 0) gives the outputs of one
prefill of the whole sequence; padding tokens never reach the state (NaN there included) and
their own rows equal their values, as softmax attention under tcomp's cache mask gives; ``fresh``
ignores whatever the state held; the cost grows linearly in the step's tokens."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from tcomp.dialect.recurrent_linear_attention import recurrent_linear_attention as rla
from tests.dialect.costing import static_cost

F64 = torch.float64


def _loop(q, k, v, real, s0, z0):
    """Token by token: query i reads the state so far plus its own token; real tokens join it."""
    b, h, n, _ = q.shape
    rep = h // k.shape[1]
    out = torch.zeros(b, h, n, v.shape[-1], dtype=F64)
    s, z = s0.clone(), z0.clone()
    for i in range(n):
        kk, vv = k[:, :, i], v[:, :, i]  # (B, Hk, F), (B, Hk, Dv)
        own_s = s + kk[..., :, None] * vv[..., None, :]
        own_z = z + kk
        for hh in range(h):
            g = hh // rep
            num = (q[:, hh, i, :, None] * own_s[:, g]).sum(-2)
            den = (q[:, hh, i] * own_z[:, g]).sum(-1, keepdim=True)
            out[:, hh, i] = torch.where(den > 0, num / den, torch.zeros(()))
        keep = real[:, i][:, None, None, None]
        s = torch.where(keep, own_s, s)
        z = torch.where(keep[..., 0], own_z, z)
    return out, s, z


def _case(g, b, h, hk, n, f, dv, pad):
    q = torch.rand(b, h, n, f, generator=g, dtype=F64) + 0.05
    k = torch.rand(b, hk, n, f, generator=g, dtype=F64) + 0.05
    v = torch.randn(b, hk, n, dv, generator=g, dtype=F64)
    real = torch.ones(b, n, dtype=torch.bool)
    real[0, :pad] = False  # left padding on row 0
    return q, k, v, real


@given(
    b=st.integers(1, 3), hk=st.sampled_from([1, 2]), rep=st.sampled_from([1, 2]), n=st.integers(1, 9),
    f=st.integers(1, 6), dv=st.integers(1, 5), pad=st.integers(0, 4), fresh=st.booleans(), seed=st.integers(0, 2**16),
)  # fmt: skip
def test_matches_token_by_token_loop(b, hk, rep, n, f, dv, pad, fresh, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v, real = _case(g, b, hk * rep, hk, n, f, dv, min(pad, n))
    s0 = torch.rand(b, hk, f, dv, generator=g, dtype=F64)
    z0 = torch.rand(b, hk, f, generator=g, dtype=F64) + 0.1
    out, s, z = rla(q, k, v, real, s0, z0, torch.tensor([fresh]))
    zs = (torch.zeros_like(s0), torch.zeros_like(z0)) if fresh else (s0, z0)
    want, ws, wz = _loop(q, k, v, real, *zs)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s, ws, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(z, wz, rtol=1e-12, atol=1e-12)


@given(n=st.integers(2, 12), cut=st.integers(1, 11), pad=st.integers(0, 3), seed=st.integers(0, 2**16))
def test_prefill_then_steps_equals_one_prefill(n, cut, pad, seed):
    """A prefill of the first ``cut`` tokens (fresh), then one token at a time, each step starting
    from the state the previous wrote: the outputs of one prefill of all ``n`` tokens."""
    g = torch.Generator().manual_seed(seed)
    cut = min(cut, n - 1)
    q, k, v, real = _case(g, 2, 4, 2, n, 5, 3, min(pad, cut))
    junk = torch.full((2, 2, 5, 3), float("nan"), dtype=F64)  # never read: the first step is fresh
    whole, s_all, z_all = rla(q, k, v, real, junk, junk[..., 0], torch.tensor([True]))
    out, s, z = rla(q[:, :, :cut], k[:, :, :cut], v[:, :, :cut], real[:, :cut], junk, junk[..., 0], torch.tensor([True]))
    outs = [out]
    for i in range(cut, n):
        o, s, z = rla(q[:, :, i : i + 1], k[:, :, i : i + 1], v[:, :, i : i + 1], real[:, i : i + 1], s, z,
                      torch.tensor([False]))  # fmt: skip
        outs.append(o)
    torch.testing.assert_close(torch.cat(outs, 2), whole, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close((s, z), (s_all, z_all), rtol=1e-12, atol=1e-12)


def test_padding_rows_read_their_own_value_and_never_reach_the_state():
    g = torch.Generator().manual_seed(0)
    q, k, v, real = _case(g, 2, 2, 1, 6, 4, 3, 3)
    k[0, :, :3] = float("nan")  # padding keys hold garbage: it must not reach anything else
    v2 = v.clone()
    v2[0, :, :3] = float("nan")
    out, s, z = rla(q, k, v2, real, torch.zeros(2, 1, 4, 3, dtype=F64), torch.zeros(2, 1, 4, dtype=F64),
                    torch.tensor([True]))  # fmt: skip
    assert torch.isfinite(out[0, :, 3:]).all() and torch.isfinite(s).all() and torch.isfinite(z).all()
    k[0, :, :3] = 1.0
    out, _, _ = rla(q, k, v, real, torch.zeros(2, 1, 4, 3, dtype=F64), torch.zeros(2, 1, 4, dtype=F64),
                    torch.tensor([True]))  # fmt: skip
    # a padding query reads only its own token (the earlier ones are padding too): its value
    torch.testing.assert_close(out[0, :, :3], v[0, :, :3].expand(2, -1, -1), rtol=1e-12, atol=1e-12)


def test_half_inputs_keep_a_float32_state():
    g = torch.Generator().manual_seed(1)
    q, k, v, real = _case(g, 1, 2, 2, 5, 4, 3, 0)
    s0, z0 = torch.zeros(1, 2, 4, 3), torch.zeros(1, 2, 4)
    out, s, z = rla(q.half(), k.half(), v.half(), real, s0, z0, torch.tensor([True]))
    assert out.dtype == torch.float16 and s.dtype == z.dtype == torch.float32
    want, ws, _ = _loop(q.half().double(), k.half().double(), v.half().double(), real, s0.double(), z0.double())
    assert (out.double() - want).norm() / want.norm() < 2e-3
    assert (s.double() - ws).norm() / ws.norm() < 1e-6


def test_cost_is_linear_in_the_step_tokens():
    costs = []
    for n in (64, 128, 256):
        q = torch.rand(1, 4, n, 8)
        k, v = torch.rand(1, 2, n, 8), torch.rand(1, 2, n, 8)
        args = (q, k, v, torch.ones(1, n, dtype=torch.bool), torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8),
                torch.tensor([True]))  # fmt: skip
        costs.append(static_cost(lambda *t: rla(*t)[0], args))
    (f1, b1), (f2, b2), (f3, b3) = costs
    assert f1 > 0 and abs((f3 - f2) - 2 * (f2 - f1)) < 1e-6 * f3
    assert abs((b3 - b2) - 2 * (b2 - b1)) < 1e-6 * b3
