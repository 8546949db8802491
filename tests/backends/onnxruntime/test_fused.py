"""Fused epilogues of the ONNX Runtime backend: residual add + LayerNorm -> SkipLayerNormalization,
linear bias + GELU -> BiasGelu (erf) / FastGelu (tanh). The fx rewrite (structure, counts, the sites
it must leave alone), the dialect ops' reference implementations, and the exported ORT kernels
against a float64 reference on fresh random inputs at other batch sizes and sequence lengths."""

from __future__ import annotations

import importlib.util
from collections import Counter

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import tcomp
import tcomp.dialect  # noqa: F401 - registers the dialect
from tcomp.backends.onnxruntime.fused import fuse_epilogues
from tcomp.capture import capture
from tcomp.verify import rel_error

HAVE_ORT = all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnxscript", "onnx"))
F32_EPS = torch.finfo(torch.float32).eps


class Block(nn.Module):
    """A post-LN BERT block's epilogues: attention-output linear + residual + LN, FFN with GELU."""

    def __init__(self, c: int = 16, approximate: str = "none", pre_ln: bool = False):
        super().__init__()
        self.out = nn.Linear(c, c)
        self.up, self.down = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.ln1, self.ln2 = nn.LayerNorm(c, eps=1e-12), nn.LayerNorm(c)
        self.drop = nn.Dropout(0.1)
        self.approximate, self.pre_ln = approximate, pre_ln

    def forward(self, x):
        if self.pre_ln:  # the sum is used twice: the add has another user, no SkipLayerNorm
            s = x + self.out(x)
            return s + self.down(torch.nn.functional.gelu(self.up(self.ln1(s)), approximate=self.approximate))
        h = self.ln1(self.drop(self.out(x)) + x)
        f = torch.nn.functional.gelu(self.up(h), approximate=self.approximate)
        return self.ln2(h + self.drop(self.down(f)))


def _targets(gm) -> Counter:
    return Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_function")


def _fused_graph(mod, x):
    gm = capture(mod, (x,)).gm
    before = _targets(gm)
    counts = fuse_epilogues(gm)
    return gm, before, counts


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_rewrite_structure_and_equivalence(approximate):
    torch.manual_seed(0)
    mod = Block(approximate=approximate).eval()
    x = torch.randn(2, 5, 16)
    gm, before, counts = _fused_graph(mod, x)
    assert counts == {"bias_gelu": 1, "skip_layer_norm": 2}
    after = _targets(gm)
    assert after["tcomp.bias_gelu.default"] == 1 and after["tcomp.skip_layer_norm.default"] == 2
    assert after["aten.gelu.default"] == 0 and after["aten.layer_norm.default"] == 0
    assert before["aten.add.Tensor"] - after["aten.add.Tensor"] == 2
    # every linear's bias moved into a fused op (out, down -> SkipLayerNorm; up -> BiasGelu)
    linears = [n for n in gm.graph.nodes if n.target is torch.ops.aten.linear.default]
    assert len(linears) == 3 and all(len(n.args) == 2 for n in linears)
    gelu_node = next(n for n in gm.graph.nodes if n.target is torch.ops.tcomp.bias_gelu.default)
    assert gelu_node.args[2] == approximate
    # the rewritten graph (dialect reference implementations) computes the same function
    ref = Block(approximate=approximate).eval()
    ref.load_state_dict(mod.state_dict())
    ref = ref.double()
    x2 = torch.randn(3, 7, 16)
    with torch.no_grad():
        err = rel_error(gm(x2), ref(x2.double()))
        own = rel_error(mod(x2), ref(x2.double()))
    assert err <= max(4 * own, 16 * F32_EPS), (err, own)


def test_sites_left_alone():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    # pre-LN: the residual sum feeds the LayerNorm and the next residual -> no SkipLayerNorm
    _, _, counts = _fused_graph(Block(pre_ln=True).eval(), x)
    assert counts == {"bias_gelu": 1, "skip_layer_norm": 0}
    # float64: ORT's contrib kernels are float32 here -> nothing fused
    _, _, counts = _fused_graph(Block().eval().double(), x.double())
    assert counts == {"bias_gelu": 0, "skip_layer_norm": 0}


@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 9), st.integers(1, 24)),
    approximate=st.sampled_from(["none", "tanh"]),
    with_rbias=st.booleans(),
    with_beta=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_dialect_reference_impls(shape, approximate, with_rbias, with_beta, seed):
    """fp32 reference implementations vs the unfused formula in float64 (relative error)."""
    g = torch.Generator().manual_seed(seed)
    c = shape[-1]
    x, skip = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    w, b, rb = (torch.randn(c, generator=g) for _ in range(3))
    beta = b if with_beta else None
    rbias = rb if with_rbias else None
    got = torch.ops.tcomp.skip_layer_norm(x, skip, w, beta, rbias, 1e-5)
    s = x.double() + skip.double() + (rb.double() if with_rbias else 0)
    want = nn.functional.layer_norm(s, (c,), w.double(), b.double() if with_beta else None, 1e-5)
    # per element, relative to the scale the normalised value gets (|w|): with c = 1 the exact result
    # is 0 (+ beta) and fp32 leaves rounding noise of that scale, which a norm-relative error blows up
    scale = want.abs() + w.double().abs() + 1e-30
    assert ((got.double() - want).abs() / scale).max() <= 64 * F32_EPS
    got = torch.ops.tcomp.bias_gelu(x, b, approximate)
    h = x.double() + b.double()
    want = nn.functional.gelu(h, approximate=approximate)
    # per element, relative to |x + b|: gelu(h) = h * Phi(h) and fp32 computes Phi(h) = (1 + erf) / 2
    # with absolute error ~eps, so deep in the negative tail (gelu(h) -> 0) the error is eps * |h|,
    # which a norm-relative error over a handful of tail elements turns into a false failure
    scale = want.abs() + h.abs() + 1e-30
    assert torch.isfinite(got).all()
    assert ((got.double() - want).abs() / scale).max() <= 64 * F32_EPS


needs_ort = pytest.mark.skipif(not HAVE_ORT, reason="onnxruntime / onnxscript / onnx not installed")


@pytest.fixture(scope="module")
def fused_backend():
    import tcomp.backends.onnxruntime  # noqa: F401
    from tcomp.backend import get_backend

    b = get_backend("onnxruntime")
    old, b.fused = b.fused, True
    yield b
    b.fused = old


def _onnx_ops(om) -> Counter:
    import onnx

    model = onnx.load_from_string(bytes(om.graph_module._onnx_model.numpy()))
    return Counter(f"{n.domain}.{n.op_type}" if n.domain else n.op_type for n in model.graph.node)


@pytest.fixture(scope="module", params=["none", "tanh"])
def lowered(request, fused_backend):
    torch.manual_seed(1)
    mod = Block(c=24, approximate=request.param).eval()
    om = tcomp.optimize(mod, (torch.randn(2, 6, 24),), backend="onnxruntime")
    return request.param, mod, om


@needs_ort
def test_ort_kernels_emitted(lowered):
    approximate, _, om = lowered
    fuse = om.report["fuse.onnxruntime.epilogues"]  # a named step of the plan, verified on its own
    assert fuse.status == "applied" and fuse.rewrites == 3, (fuse.reason, fuse.notes)
    assert fuse.error <= fuse.tolerance
    assert any("2 residual add + LayerNorm" in n and "1 linear bias + GELU" in n for n in fuse.notes), (
        fuse.notes
    )
    rec = om.report["lower.onnxruntime"]
    assert rec.status == "applied", rec.reason
    assert rec.error <= rec.tolerance
    ops = _onnx_ops(om)
    assert ops["com.microsoft.SkipLayerNormalization"] == 2
    assert ops["com.microsoft.BiasGelu" if approximate == "none" else "com.microsoft.FastGelu"] == 1
    assert ops["LayerNormalization"] == 0 and ops["Erf"] == 0 and ops["Tanh"] == 0


@needs_ort
@given(b=st.integers(1, 5), n=st.integers(1, 33), scale=st.floats(0.1, 10.0), seed=st.integers(0, 2**31 - 1))
def test_ort_kernels_fp_equivalent(lowered, b, n, scale, seed):
    """The ORT session at fresh batch sizes / lengths: error vs float64 no worse than a small
    multiple of eager fp32's own error (FP_EQUIVALENT), never NaN."""
    approximate, mod, om = lowered
    x = torch.randn(b, n, 24, generator=torch.Generator().manual_seed(seed)) * scale
    ref = Block(c=24, approximate=approximate).eval()
    ref.load_state_dict(mod.state_dict())
    with torch.no_grad():
        want = ref.double()(x.double())
        own = rel_error(mod(x), want)
        err = rel_error(om(x), want)
    assert err <= max(4 * own, 64 * F32_EPS), (err, own)
