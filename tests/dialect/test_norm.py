"""``tcomp.rms_norm``: the reference against float64, its cost formula against counted bytes and the
stated per-element constants, and its canonical forms (aten.rms_norm, Hugging Face's decomposed
chain and other spellings) -- structure, counts, the chains it must leave alone, and equivalence."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import tcomp
from tcomp.capture import capture
from tcomp.dialect.norm import RMS_NORM_ELEMENT_FLOPS, RMS_NORM_ROW_FLOPS, rms_norm
from tcomp.verify import rel_error
from tests.dialect.costing import io_bytes, static_cost, symbolic_cost

RMS = "tcomp.rms_norm.default"


def _f64(x, w, eps):
    x = x.double()
    y = x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)
    return y if w is None else y * w.double()


@settings(deadline=None, max_examples=25)
@given(
    rows=st.integers(1, 9), d=st.integers(1, 70), weighted=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.float64]), seed=st.integers(0, 2**16),
)  # fmt: skip
def test_reference_matches_float64(rows, d, weighted, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, 3, d, generator=g) * 3).to(dtype)
    w = torch.randn(d, generator=g).to(dtype) if weighted else None
    y = rms_norm(x, w, 1e-6)
    assert y.dtype == dtype and y.shape == x.shape
    ref = _f64(x, w, 1e-6)
    eps = torch.finfo(dtype).eps
    assert torch.isfinite(y).all()
    assert rel_error(y, ref) <= 4 * eps  # one rounding of each element, fp32 accumulation


def test_nan_row_stays_nan_and_others_do_not_change():
    x, w = torch.randn(4, 16), torch.randn(16)
    x[2, 5] = float("nan")
    y = rms_norm(x, w, 1e-6)
    assert torch.isnan(y[2]).all() and torch.isfinite(y[[0, 1, 3]]).all()


@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cost_counted(weighted, dtype):
    b, t, d = 2, 5, 12
    x = torch.randn(b, t, d, dtype=dtype)
    tensors = [x, torch.randn(d, dtype=dtype)] if weighted else [x]
    fn = (lambda x, w: rms_norm(x, w, 1e-6)) if weighted else (lambda x: rms_norm(x, None, 1e-6))
    flops, nbytes = static_cost(fn, tensors)
    assert (RMS_NORM_ELEMENT_FLOPS, RMS_NORM_ROW_FLOPS) == (3, 3)
    # per element: square, sum, product with 1/rms (+ the weight); per row: / D, + eps, rsqrt
    assert flops == b * t * d * (3 + int(weighted)) + b * t * 3
    assert nbytes == io_bytes(tensors, fn(*tensors))
    c = symbolic_cost(fn, tensors, dims={0: 1})
    assert c.evaluate(batch=b, seq=t) == (flops, nbytes)


# -- canonical forms --------------------------------------------------------------------------------


class HFStyle(nn.Module):
    """Hugging Face's LlamaRMSNorm spelling (upcast, pow, mean, rsqrt, downcast, weight first)."""

    def __init__(self, d, square="pow", inverse="rsqrt", weight_first=True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d))
        self.square, self.inverse, self.weight_first = square, inverse, weight_first

    def forward(self, h):
        dtype = h.dtype
        h = h.to(torch.float32)
        sq = h.pow(2) if self.square == "pow" else h * h
        var = sq.mean(-1, keepdim=True)
        h = h * torch.rsqrt(var + 1e-5) if self.inverse == "rsqrt" else h / torch.sqrt(var + 1e-5)
        h = h.to(dtype)
        return self.weight.to(dtype) * h if self.weight_first else h * self.weight.to(dtype)


class Block(nn.Module):
    def __init__(self, norm, d=16):
        super().__init__()
        self.lin, self.norm = nn.Linear(d, d), norm

    def forward(self, x):
        return x + self.lin(self.norm(x))


def _canon(model, x):
    gm = capture(model, (x,)).gm
    result = tcomp.registered_passes()["canonicalize"](gm)
    return result, Counter(str(n.target) for n in result.gm.graph.nodes if n.op == "call_function")


@pytest.mark.parametrize(
    "norm",
    [
        lambda: nn.RMSNorm(16, eps=1e-6),
        lambda: nn.RMSNorm(16),  # eps None: aten's default, finfo(dtype).eps
        lambda: nn.RMSNorm(16, elementwise_affine=False),
        lambda: HFStyle(16),
        lambda: HFStyle(16, square="mul", inverse="sqrt", weight_first=False),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_canonical_forms(norm, dtype):
    torch.manual_seed(0)
    model = Block(norm()).to(dtype).eval()
    x = torch.randn(2, 7, 16, dtype=dtype)
    result, ops = _canon(model, x)
    assert ops[RMS] == 1 and result.rewrites == 1
    assert not {"aten.rsqrt.default", "aten.sqrt.default", "aten.rms_norm.default"} & set(ops)
    x2 = torch.randn(3, 5, 16, dtype=dtype)  # other batch and sequence: the graph stays dynamic
    with torch.no_grad():
        ref = model.double()(x2.double())
        model.to(dtype)
        out = result.gm(x2)
        base = model(x2)
    tol = 4 * max(rel_error(base, ref), torch.finfo(dtype).eps)
    assert rel_error(out, ref) <= tol


def test_hf_llama_rmsnorm():
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    assert transformers is not None
    model = Block(LlamaRMSNorm(16, eps=1e-6)).eval()
    result, ops = _canon(model, torch.randn(2, 7, 16))
    assert ops[RMS] == 1


class NotRMS(nn.Module):
    """Chains that look like RMSNorm but are not: mean over another dim, a mean square of another
    tensor, and a normalised value used twice (the intermediate is needed elsewhere)."""

    def forward(self, x):
        a = x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + 1e-6)  # over the sequence, not channels
        b = x * torch.rsqrt((x + 1).pow(2).mean(-1, keepdim=True) + 1e-6)  # another tensor's mean square
        inv = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        c = x * inv + inv  # 1/rms used twice
        return a + b + c


def test_lookalikes_left_alone():
    _, ops = _canon(NotRMS().eval(), torch.randn(2, 7, 16))
    assert ops[RMS] == 0


def test_zoo_llama_like_model_through_optimize():
    from tcomp import models as zoo

    e = zoo.get("gpt-gqa")
    om = tcomp.optimize(e.model, tuple(e.example_inputs), passes=["canonicalize"])
    (rec,) = om.report.passes
    n_norms = sum(isinstance(m, nn.RMSNorm) for m in e.model.modules())
    assert n_norms >= 3
    assert sum("rms_norm at" in n for n in rec.notes) == n_norms
    assert rec.status == "applied"
    assert sum(str(n.target) == RMS for n in om.graph_module.graph.nodes) == n_norms
