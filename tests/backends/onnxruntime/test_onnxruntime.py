"""The ONNX Runtime backend: whole-graph export (tcomp.attention as standard ONNX ops) run by an
InferenceSession, verified FP_EQUIVALENT by the pipeline and checked at other shapes."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("onnxruntime", "onnxscript", "onnx")),
    reason="onnxruntime / onnxscript / onnx not installed",
)

import tcomp  # noqa: E402

REF = torch.ops.tcomp.attention.default if hasattr(torch.ops, "tcomp") else None


@pytest.fixture(scope="module", autouse=True)
def _register():
    import tcomp.backends.onnxruntime  # noqa: F401
    import tcomp.dialect  # noqa: F401


def _lower_record(om):
    return next(r for r in om.report.passes if r.name == "lower.onnxruntime")


def _assert_applied(om):
    rec = _lower_record(om)
    assert rec.status == "applied", rec.reason
    assert rec.error is not None and rec.error <= rec.tolerance
    assert "run_onnx" in om.graph_module.code


class Site(nn.Module):
    """One bare tcomp.attention call with the options under test."""

    def __init__(self, *, bias: bool, mask: bool, causal: bool, h: int = 4, hk: int = 4, d: int = 8):
        super().__init__()
        self.h, self.hk, self.d = h, hk, d
        self.use_bias, self.use_mask, self.causal = bias, mask, causal
        self.proj = nn.Linear(d, d)

    def forward(self, x, y, keep):  # x (B, N, H*D), y (B, M, Hk*D), keep (B, M) int 0/1
        b, n, _ = x.shape
        m = y.shape[1]
        q = x.view(b, n, self.h, self.d).transpose(1, 2)
        k = y.view(b, m, self.hk, self.d).transpose(1, 2)
        v = self.proj(k)
        bias = (
            (q[..., :1] * k[..., 0].unsqueeze(-2)) if self.use_bias else None
        )  # (B, H, N, M) via GQA-free k
        mask = (keep[:, None, None, :] > 0) if self.use_mask else None
        return torch.ops.tcomp.attention.default(q, k, v, bias, mask, self.d**-0.5, self.causal)


@pytest.fixture(params=[False, True], ids=["std-ops", "fused-mha"])
def fused(request):
    """Run a test with standard ONNX ops and with com.microsoft.MultiHeadAttention."""
    from tcomp.backend import get_backend

    b = get_backend("onnxruntime")
    old, b.fused = b.fused, request.param
    yield request.param
    b.fused = old


@pytest.mark.parametrize(
    "bias,mask,causal,hk",
    [
        (False, False, False, 4),
        (False, True, False, 4),
        (True, False, False, 4),
        (True, True, True, 4),
        (False, False, True, 2),  # GQA
        (False, True, False, 1),  # MQA
    ],
)
def test_attention_specialisations(bias, mask, causal, hk, fused):
    torch.manual_seed(0)
    if bias and hk != 4:
        pytest.skip("bias helper needs H == Hk")
    mod = Site(bias=bias, mask=mask, causal=causal, hk=hk).eval()
    x, y = torch.randn(2, 6, 32), torch.randn(2, 7, hk * 8)
    keep = torch.ones(2, 7, dtype=torch.long)
    keep[1, 4:] = 0
    om = tcomp.optimize(mod, (x, y, keep), backend="onnxruntime")
    _assert_applied(om)
    rec = _lower_record(om)
    assert ("MultiHeadAttention" in rec.notes[0]) == fused
    # another batch and sequence length, with a fully-masked row -> zeros
    x, y = torch.randn(3, 9, 32), torch.randn(3, 11, hk * 8)
    keep = torch.ones(3, 11, dtype=torch.long)
    keep[1, 5:] = 0
    keep[2] = 0
    with torch.no_grad():
        want, got = mod(x, y, keep), om(x, y, keep)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_zoo_bert_dynamic_shapes_and_save(tmp_path, fused):
    from tcomp import models as zoo

    e = zoo.get("bert")
    om = tcomp.optimize(e.model, e.example_inputs, example_kwargs=e.example_kwargs, backend="onnxruntime")
    _assert_applied(om)
    # the whole graph is one ONNX Runtime session; the report still lists the attention sites it holds
    assert len(om.report.sites) == e.model.cfg.depth and {s["runs_on"] for s in om.report.sites} == {"onnxruntime"}
    ids = torch.randint(1, 100, (3, 23))
    am = torch.ones(3, 23, dtype=torch.long)
    am[1, 15:] = 0
    with torch.no_grad():
        want = e.model(ids, attention_mask=am)
        got = om(ids, attention_mask=am)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # a saved artifact recreates its session from the ONNX bytes it carries (in the weights)
    from tcomp.backends import onnxruntime as ortb

    om.save(str(tmp_path / "art"))
    ortb._SESSIONS.clear()
    ortb._INPUT_ORDER.clear()
    loaded = tcomp.load(str(tmp_path / "art"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, attention_mask=am), want, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(
    not __import__("tcomp.models.minilm", fromlist=["x"]).is_available(),
    reason="MiniLM weights not installed",
)
def test_real_minilm():
    from tcomp.models import minilm

    mm = minilm.load()
    inputs = minilm.example_inputs(mm.tokenizer, minilm.SENTENCES[:4])
    om = tcomp.optimize(mm.encoder, inputs, backend="onnxruntime")
    _assert_applied(om)
    other = minilm.example_inputs(mm.tokenizer, minilm.SENTENCES[4:10], max_length=24)
    with torch.no_grad():
        want = mm.encoder(**other)
        got = om(**other)
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)
