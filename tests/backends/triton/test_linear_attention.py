"""Generated linear-attention kernels (backends/triton/linear_attention.py) under the Triton
interpreter on CPU: non-causal (state + readout) and causal chunked, fp32 and fp16, GQA and key
masks, against the float64 quadratic reference; lowering of tcomp.linear_attention nodes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("triton")

import tcomp.passes  # noqa: E402,F401
from tcomp.backends.triton import linear_attention as lin  # noqa: E402
from tcomp.targets import get_target  # noqa: E402
from tests.passes.test_linear_attention import reference  # noqa: E402

TOL = {torch.float32: 2e-5, torch.float16: 4e-3}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the interpreter (conftest)


@st.composite
def problems(draw):
    b = draw(st.integers(1, 2))
    hk = draw(st.sampled_from([1, 2]))
    h = hk * draw(st.sampled_from([1, 2]))
    n = draw(st.integers(1, 40))
    f, dv = draw(st.sampled_from([8, 16, 24])), draw(st.sampled_from([8, 16, 20]))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    q = torch.rand(b, h, n, f, generator=g) + 0.05
    k = torch.rand(b, hk, n, f, generator=g) + 0.05
    v = torch.randn(b, hk, n, dv, generator=g)
    mask = (torch.rand(b, n, generator=g) > 0.3) if draw(st.booleans()) else None
    return q, k, v, mask


@settings(max_examples=16)
@given(
    problems(), st.booleans(), st.sampled_from([torch.float32, torch.float16]), st.sampled_from([None, 16]),
    st.booleans(),
)  # fmt: skip
def test_kernels_match_float64_reference(prob, causal, dtype, block, parallel):
    """``block=16``: many chunks / key blocks, and the state reduction split three ways;
    ``parallel``: the causal chunk-parallel form (prefix states) instead of the sequential one."""
    q, k, v, mask = (t.to(dtype) if t is not None and t.is_floating_point() else t for t in prob)
    dev = [t.to(DEVICE) if t is not None else None for t in (q, k, v, mask)]
    out = lin.linear_attention(
        *dev, causal, target="h200", block=block, splits=3 if block else None, parallel=parallel
    ).cpu()
    ref = reference(q, k, v, mask, causal)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert (out.double() - ref).norm() <= TOL[dtype] * max(ref.norm(), 1e-6)


@pytest.mark.parametrize("causal,parallel", [(False, None), (True, False), (True, True)])
def test_fully_masked_rows_are_zero(causal, parallel):
    q, k, v = (f(1, 2, 5, 16, device=DEVICE) for f in (torch.rand, torch.rand, torch.randn))
    mask = torch.zeros(1, 5, dtype=torch.bool, device=DEVICE)
    out = lin.linear_attention(q, k, v, mask, causal, target="h200", parallel=parallel)
    assert torch.equal(out, torch.zeros_like(out))
    mask[0, 3] = True
    out = lin.linear_attention(q, k, v, mask, causal, target="h200", parallel=parallel)
    assert torch.isfinite(out).all() and (out[0, :, 3:] != 0).any()
    if causal:
        assert torch.equal(out[0, :, :3], torch.zeros_like(out[0, :, :3]))  # no visible key yet


@pytest.mark.parametrize("causal", [False, True])
def test_every_autotune_candidate_is_correct(causal):
    """The autotuner may pick any candidate on a GPU: each one computes the same function."""
    g = torch.Generator().manual_seed(7)
    q, k = (torch.rand(2, 2, 70, 16, generator=g) + 0.05 for _ in range(2))
    v = torch.randn(2, 2, 70, 40, generator=g)
    mask = torch.rand(2, 70, generator=g) > 0.2
    ref = reference(q, k, v, mask, causal)
    default = lin.default_config(2, 2, 70, 40, causal, interp=False, target=get_target("h200"))
    cands = lin.candidates(default, causal, 40)
    assert len(cands) > 3 and cands[0] == default
    for cfg in cands:
        assert lin._by_name(cfg.name) == cfg
        dev = [t.to(DEVICE) for t in (q, k, v, mask)]
        out = lin.linear_attention(*dev, causal, target="h200", config=cfg).cpu()
        assert torch.isfinite(out).all()
        assert (out.double() - ref).norm() <= TOL[torch.float32] * ref.norm(), cfg.name


def test_backend_lowers_linear_attention_sites():
    from tcomp.backend import get_backend
    from tcomp.capture import capture
    from tcomp.pipeline import run_pipeline
    from tests.attention_zoo import AttnSpec, build, inputs

    spec = AttnSpec(spelling="sdpa", mask="bool", heads=2, head_dim=16)
    model = build(spec, layers=1).to(DEVICE)
    args = tuple(a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in inputs(spec, 2, 9, padded=True))
    gm = run_pipeline(
        capture(model, args).gm, ["canonicalize", ("attention.linear", {"feature_map": "elu1"})]
    ).gm
    want = gm(*args)
    res = get_backend("triton").lower(gm, target="h200")
    assert any(n.target is lin.linear_attention for n in res.gm.graph.nodes)
    got = res.gm(*args)
    assert (got - want).norm() <= 1e-4 * want.norm()
    assert any(
        name.startswith("tcomp_linattn_state") for name in get_backend("triton").kernel_sources(res.gm)
    )
