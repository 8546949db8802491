"""Generated kernels for ``tcomp.recurrent_linear_attention`` (backends/triton/recurrent_linear_attention.py)
under the Triton interpreter on CPU (on CUDA where there is one): the token-by-token decode kernel
and the chunked prefill kernel against the float64 reference of the dialect op -- random batch,
heads (GQA), feature and value dims, 1 to 40 new tokens, padding masks, a fresh or a carried state,
fp32 and fp16 (bf16 on CUDA only: the interpreter's bf16 arithmetic is wrong); NaN in a fresh
step's state buffer or in padded tokens never leaks; a prefill then decode steps on the kernels
equals one prefill of the whole sequence; and a linear-attention decoder lowered to Triton runs the
op on the kernels (not the eager reference) and generates the eager backend's greedy tokens."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

import tcomp  # noqa: E402
from tcomp.backends.triton import TRITON  # noqa: E402
from tcomp.backends.triton import recurrent_linear_attention as rec  # noqa: E402
from tcomp.dialect.recurrent_linear_attention import recurrent_linear_attention as reference  # noqa: E402
from tcomp.targets import get_target  # noqa: E402
from tcomp.verify import rel_error  # noqa: E402

TOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}
STATE_TOL = 2e-6  # the state stays fp32 whatever the inputs
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the interpreter (conftest)
F64 = torch.float64


def _inputs(g, b, h, hk, n, f, dv, pad, holes, dtype):
    """Non-negative features (what every map tcomp emits gives), random values and state; row 0
    left-padded by ``pad`` tokens, and with ``holes`` more tokens masked at random."""
    q = (torch.rand(b, h, n, f, generator=g) + 0.05).to(dtype)
    k = (torch.rand(b, hk, n, f, generator=g) + 0.05).to(dtype)
    v = torch.randn(b, hk, n, dv, generator=g).to(dtype)
    real = torch.ones(b, n, dtype=torch.bool)
    real[0, :pad] = False
    if holes:
        real &= torch.rand(b, n, generator=g) > 0.3
    s = torch.randn(b, hk, f, dv, generator=g)
    z = torch.rand(b, hk, f, generator=g) + 0.1
    return q, k, v, real, s, z


def _run(q, k, v, real, s, z, fresh, **kw):
    dev = [t.to(DEVICE) for t in (q, k, v, real, s, z, torch.tensor([fresh]))]
    return [t.cpu() for t in rec.recurrent_linear_attention(*dev, target="h200", **kw)]


def _want(q, k, v, real, s, z, fresh):
    return reference(q.double(), k.double(), v.double(), real, s.double(), z.double(), torch.tensor([fresh]))


def _assert_close(got, want, dtype):
    out, s, z = got
    assert out.dtype == dtype and s.dtype == z.dtype == torch.float32
    for t in got:
        assert torch.isfinite(t).all()
    assert rel_error(out.double(), want[0]) <= TOL[dtype], rel_error(out.double(), want[0])
    assert rel_error(s.double(), want[1]) <= STATE_TOL and rel_error(z.double(), want[2]) <= STATE_TOL


@st.composite
def problems(draw):
    hk = draw(st.sampled_from([1, 2]))
    n = draw(st.one_of(st.integers(1, 4), st.integers(5, 40)))
    return dict(
        b=draw(st.integers(1, 2)), hk=hk, h=hk * draw(st.sampled_from([1, 2, 3])), n=n,
        f=draw(st.sampled_from([4, 16, 24])), dv=draw(st.sampled_from([3, 16, 20])),
        pad=draw(st.integers(0, n)), holes=draw(st.booleans()),
    )  # fmt: skip


@settings(max_examples=24)
@given(
    problems(), st.booleans(), st.sampled_from([torch.float32, torch.float16]),
    st.sampled_from([None, "step", "chunk"]), st.booleans(), st.integers(0, 2**16),
)  # fmt: skip
def test_kernels_match_float64_reference(p, fresh, dtype, kind, small_tiles, seed):
    """``kind``: the launcher's choice by the number of new tokens, or one kernel forced;
    ``small_tiles``: 16-token chunks and Dv blocks of 16 (several chunks, several programs per head)."""
    if kind == "step" and p["n"] > 16:
        kind = None  # the token loop is the decode kernel: keep the interpreter's time bounded
    g = torch.Generator().manual_seed(seed)
    q, k, v, real, s, z = _inputs(g, **p, dtype=dtype)
    cfg = rec.RecConfig(16, 16) if small_tiles else None
    got = _run(q, k, v, real, s, z, fresh, kind=kind, config=cfg)
    _assert_close(got, _want(q, k, v, real, s, z, fresh), dtype)


@pytest.mark.parametrize("kind", ["step", "chunk"])
def test_nan_in_fresh_state_or_padding_never_leaks(kind):
    """A fresh step reads its state as zeros, NaN in the buffer included; a padded token's NaN
    key and value never reach the state nor another row (its own row reads them: the reference's
    NaN or zeros there); a row whose normaliser is zero is zeros."""
    g = torch.Generator().manual_seed(11)
    q, k, v, real, s, z = _inputs(g, 2, 4, 2, 6, 16, 8, pad=2, holes=False, dtype=torch.float32)
    s.fill_(float("nan"))
    z.fill_(float("nan"))
    k[0, :, 1], v[0, :, 1] = float("nan"), float("nan")  # row 0's second token is padding
    q[1, 3, 0] = 0.0  # fresh and nothing before: a zero normaliser
    k[1, 1, 0] = 1.0  # (its own key is not zero, but the query is: q . k = 0)
    out, s2, z2 = _run(q, k, v, real, s, z, True, kind=kind)
    want = _want(q, k, v, real, s, z, True)
    assert torch.isfinite(s2).all() and torch.isfinite(z2).all()
    assert torch.equal(out.isnan(), want[0].isnan()) and not out[1].isnan().any()
    assert torch.equal(out[1, 3, 0], torch.zeros_like(out[1, 3, 0]))
    ok = ~want[0].isnan()
    assert rel_error(out[ok].double(), want[0][ok]) <= TOL[torch.float32]
    assert rel_error(s2.double(), want[1]) <= STATE_TOL and rel_error(z2.double(), want[2]) <= STATE_TOL


@settings(max_examples=8)
@given(n=st.integers(18, 30), cut=st.integers(17, 24), pad=st.integers(0, 4), seed=st.integers(0, 2**16))
def test_chunked_prefill_then_decode_steps_equal_one_prefill(n, cut, pad, seed):
    """A prefill of ``cut`` tokens (the chunk kernel, fresh, from a NaN buffer), then steps of one
    and of two tokens (the decode kernel), each reading the state the last wrote: the outputs of one
    float64 prefill of all ``n`` tokens."""
    cut = min(cut, n - 1)
    g = torch.Generator().manual_seed(seed)
    q, k, v, real, _s, _z = _inputs(g, 2, 4, 2, n, 16, 16, pad=pad, holes=False, dtype=torch.float32)
    junk = torch.full((2, 2, 16, 16), float("nan"))
    want = _want(q, k, v, real, junk, junk[..., 0], True)
    cuts = [0, cut, *range(cut + 1, n, 2), n]
    s, z, outs = junk, junk[..., 0], []
    for lo, hi in zip(cuts, cuts[1:]):
        part = (t[:, :, lo:hi] for t in (q, k, v))
        out, s, z = _run(*part, real[:, lo:hi], s, z, lo == 0, kind="chunk" if lo == 0 else "step")
        outs.append(out)
    assert rel_error(torch.cat(outs, 2).double(), want[0]) <= TOL[torch.float32]
    assert rel_error(s.double(), want[1]) <= STATE_TOL and rel_error(z.double(), want[2]) <= STATE_TOL


@pytest.mark.parametrize("n,kind", [(2, "step"), (20, "chunk")])
def test_every_autotune_candidate_is_correct(n, kind):
    """The autotuner may pick any candidate on a GPU: each computes the same function."""
    g = torch.Generator().manual_seed(5)
    q, k, v, real, s, z = _inputs(g, 1, 4, 2, n, 16, 40, pad=1, holes=True, dtype=torch.float32)
    want = _want(q, k, v, real, s, z, False)
    default = rec.default_config(2, n, 16, 40, interp=False, target=get_target("h200"))
    cands = rec.candidates(default, kind, 40)
    assert len(cands) > 3 and cands[0] == default
    assert all(rec.RecConfig.parse(c.name) == c for c in cands)
    for tiles in dict.fromkeys(
        (c.block_c, c.block_dv) for c in cands
    ):  # warps/stages: the interpreter ignores them
        _assert_close(
            _run(q, k, v, real, s, z, False, kind=kind, config=rec.RecConfig(*tiles)), want, torch.float32
        )


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="bf16 arithmetic is wrong under the interpreter: CUDA only"
)
@pytest.mark.parametrize("n", [1, 3, 40])
def test_bf16_on_gpu(n):
    g = torch.Generator().manual_seed(n)
    q, k, v, real, s, z = _inputs(g, 2, 8, 2, n, 64, 64, pad=min(n, 2), holes=True, dtype=torch.bfloat16)
    for fresh in (True, False):
        _assert_close(_run(q, k, v, real, s, z, fresh), _want(q, k, v, real, s, z, fresh), torch.bfloat16)


class Step(nn.Module):
    def forward(self, q, k, v, real, s, z, fresh):
        return torch.ops.tcomp.recurrent_linear_attention(q, k, v, real, s, z, fresh)


def test_lowering_and_the_reason_a_node_stays_eager():
    """fp32: the node runs on the kernel and reports its source; float64: stays eager, with the reason."""
    g = torch.Generator().manual_seed(2)
    args = [t.to(DEVICE) for t in _inputs(g, 1, 2, 1, 3, 8, 8, pad=1, holes=False, dtype=torch.float32)]
    args.append(torch.tensor([False], device=DEVICE))
    om = tcomp.optimize(Step(), tuple(args), target="h200", passes=[], backend="triton")
    low = om.report["lower.triton"]
    assert low.status == "applied" and low.rewrites == 1, (low.status, low.notes)
    calls = [n.target for n in om.graph_module.graph.nodes if n.op == "call_function"]
    assert rec.recurrent_linear_attention in calls
    assert "tcomp_reclin_step_i.py" in TRITON.kernel_sources(om.graph_module)
    want = reference(*(a.cpu().double() if a.is_floating_point() else a.cpu() for a in args))
    for got, w in zip(om(*args), want):
        assert rel_error(got.cpu().double(), w) <= TOL[torch.float32]
    f64 = [a.double() if a.is_floating_point() else a for a in args]
    low = tcomp.optimize(Step(), tuple(f64), target="h200", passes=[], backend="triton").report[
        "lower.triton"
    ]
    assert any("stays eager (q dtype torch.float64" in note for note in low.notes), low.notes


@pytest.mark.hf
def test_linear_decoder_on_triton_generates_the_eager_tokens():
    """attention.linear on a tiny GQA Llama with a left-padded batch and a prompt long enough for
    the chunked prefill kernel: both graphs run the op on the kernels, the logits of the prefill
    and of a decode step match the eager backend's, and greedy generation gives its tokens."""
    from tests.generation.decoders import VOCAB, make

    model = make("llama").to(DEVICE)
    ids = torch.randint(1, VOCAB, (2, 18), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    kw = dict(target="h100", passes=["canonicalize", ("attention.linear", {"feature_map": "elu1"})],
              max_len=26, max_batch=2, verify=False)  # fmt: skip
    fast = tcomp.optimize(model, {"input_ids": ids}, backend="triton", **kw)
    eager = tcomp.optimize(model, {"input_ids": ids}, backend="eager", **kw)
    dec = fast.tcomp_decoder
    assert dec.recurrent
    graphs = ((dec.report, dec.prefill_module, "chunk"), (dec.decode_report, dec.decode_module, "step"))
    for rep, gm, kind in graphs:  # the 18-token prefill takes the chunked kernel, decode the token loop
        low = {p.name: p for p in rep.passes}["lower.triton"]
        assert low.status == "applied" and not any("recurrent_linear_attention" in n for n in low.notes), (
            low.notes
        )
        calls = [n.target for n in gm.graph.nodes if n.op == "call_function"]
        assert calls.count(rec.recurrent_linear_attention) == dec.n_layers
        assert torch.ops.tcomp.recurrent_linear_attention.default not in calls
        spec = rec.RecSpec(kind, ieee=True)  # an fp32 model: IEEE dots
        assert f"{spec.name}.py" in TRITON.kernel_sources(gm), sorted(TRITON.kernel_sources(gm))
    for a, b in ((dec.step(ids, mask, start=0), eager.tcomp_decoder.step(ids, mask, start=0)),
                 (dec.step(ids[:, :1], torch.cat([mask, mask[:, :1]], 1)),
                  eager.tcomp_decoder.step(ids[:, :1], torch.cat([mask, mask[:, :1]], 1)))):  # fmt: skip
        assert not a.isnan().any() and rel_error(a, b) < 1e-4, rel_error(a, b)
    out = tcomp.generate(fast, ids, attention_mask=mask, max_new_tokens=6)
    assert torch.equal(out, tcomp.generate(eager, ids, attention_mask=mask, max_new_tokens=6))
