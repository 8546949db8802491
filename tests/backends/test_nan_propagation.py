"""NaN propagates through every backend exactly as in eager: an input row holding a NaN comes out
NaN where the model itself puts NaN, and the other rows stay finite and equal -- with a padding
mask, so the attention lowering's handling of fully masked rows (zeros) is on the path and must not
swallow a NaN the inputs carry (ONNX Runtime's lowering used to turn every NaN into 0)."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from torch import nn

import tcomp

HAVE_ORT = all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnxscript", "onnx"))
HAVE_TRITON = importlib.util.find_spec("triton") is not None and (
    torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
)


class Block(nn.Module):
    """One attention + MLP block over float inputs, with a key-padding mask."""

    def __init__(self, d: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.norm = nn.LayerNorm(d)

    def forward(self, x, keep):
        h = self.attn(x, x, x, key_padding_mask=~keep, need_weights=False)[0]
        return self.norm(x + h + self.mlp(x + h))


def _case():
    torch.manual_seed(0)
    model = Block().eval()
    x = torch.randn(3, 8, 32)
    keep = torch.ones(3, 8, dtype=torch.bool)
    keep[2, 5:] = False  # a padded row: its masked keys go through the lowering's masking
    return model, x, keep


BACKENDS = [
    pytest.param("eager", None, id="eager"),
    pytest.param("onnxruntime", False, id="onnxruntime", marks=pytest.mark.skipif(not HAVE_ORT, reason="no ORT")),
    pytest.param("onnxruntime", True, id="onnxruntime-contrib", marks=pytest.mark.skipif(not HAVE_ORT, reason="no ORT")),
    pytest.param("triton", None, id="triton", marks=pytest.mark.skipif(not HAVE_TRITON, reason="no GPU, no interpreter")),
]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize(("backend", "fused"), BACKENDS)
def test_a_nan_in_one_row_comes_out_where_eager_puts_it(backend, fused, value):
    model, x, keep = _case()
    target = "h100" if backend == "triton" else "cpu"
    if fused is not None:
        from tcomp.backend import get_backend

        ort = get_backend("onnxruntime")
        before, ort.fused = ort.fused, fused
    try:
        om = tcomp.optimize(model, (x, keep), target=target, backend=backend, verify=False, cudagraphs=False)
    finally:
        if fused is not None:
            ort.fused = before
    assert om.report.passes[0].status == "applied" and om.report.passes[0].rewrites >= 1
    bad = x.clone()
    bad[1, 3, 7] = value  # one element of row 1: attention spreads it over the whole row
    with torch.no_grad():
        want, got = model(bad, keep), om(bad, keep)
    assert torch.equal(got.isnan(), want.isnan()), (backend, got.isnan().sum(), want.isnan().sum())
    assert torch.equal(got.isinf(), want.isinf()), (backend, got.isinf().sum(), want.isinf().sum())
    assert not want[1].isfinite().any() and want[[0, 2]].isfinite().all()
    torch.testing.assert_close(got[[0, 2]], want[[0, 2]], rtol=1e-4, atol=1e-5)
