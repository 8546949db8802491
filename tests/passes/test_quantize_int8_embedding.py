"""quantize.int8_embedding: every table entry within half a row scale (BOUNDED), lookups through
tcomp.embedding_int8 on every backend, tied tables refused with the reason, artifacts round-trip."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import tcomp
from tcomp.models.bert import Bert, BertConfig
from tcomp.quant import quantize_int8

HAVE_ORT = all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnxscript", "onnx"))


@given(st.integers(1, 300), st.integers(1, 48), st.sampled_from([torch.float32, torch.float64, torch.float16]),
       st.integers(0, 2**31 - 1))  # fmt: skip
def test_every_looked_up_entry_is_within_half_a_row_scale(rows, dim, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    table = (torch.randn(rows, dim, generator=g, dtype=torch.float64) * torch.rand(rows, 1, generator=g) * 3).to(dtype)
    q, s = quantize_int8(table)
    ids = torch.randint(0, rows, (3, 5), generator=g)
    out = torch.ops.tcomp.embedding_int8(ids, q, s, dtype)
    assert out.dtype == dtype and out.shape == (3, 5, dim)
    exact = torch.ops.tcomp.embedding_int8(ids, q, s, torch.float64)
    err = (exact - table.to(torch.float64)[ids]).abs()
    assert (err <= s.to(torch.float64)[ids].unsqueeze(-1) / 2 * (1 + 1e-6)).all()
    if dtype != torch.float64:  # the cast is the only further rounding
        torch.testing.assert_close(out, exact.to(dtype), rtol=0, atol=0)


def _bert():
    torch.manual_seed(0)
    m = Bert(BertConfig(dim=64, depth=2, heads=4, intermediate=128)).eval()
    ids = torch.randint(1, 1000, (3, 16))
    mask = torch.ones(3, 16, dtype=torch.long)
    mask[0, 12:] = 0
    return m, {"input_ids": ids, "attention_mask": mask}


def test_tables_become_int8_lookups_within_the_guard():
    m, x = _bert()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    om = tcomp.optimize(m, x, passes=["quantize.int8_embedding"])
    rec = om.report["quantize.int8_embedding"]
    assert rec.status == "applied" and rec.rewrites == 2 and rec.error < 0.15
    by = {s["site"]: s for s in rec.sites}
    assert by["embeddings.word"]["status"] == "quantized" and by["embeddings.word"]["max_weight_error_in_scales"] <= 0.5
    assert by["embeddings.token_type"]["status"] == "skipped" and "min_rows" in by["embeddings.token_type"]["reason"]
    code = om.graph_module.code
    assert "embedding_int8" in code and "aten.embedding.default(" in code  # token types stay float
    floats = sum(b.numel() * b.element_size() for n, b in om.graph_module.named_buffers() if "emb8" in n)
    assert floats < 0.3 * 4 * (1000 + 128) * 64  # a quarter of the float bytes, plus one scale per row
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_a_table_tied_to_the_output_projection_stays_float():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(100, 16)
            self.mix = nn.Linear(16, 16)

        def forward(self, ids):
            return self.mix(self.emb(ids)) @ self.emb.weight.T

    torch.manual_seed(1)
    om = tcomp.optimize(Tied().eval(), torch.randint(0, 100, (2, 7)), passes=["quantize.int8_embedding"],
                        on_failure="skip")  # fmt: skip
    rec = om.report["quantize.int8_embedding"]
    assert rec.status == "skipped" and "tied to an output projection" in rec.sites[0]["reason"]
    with pytest.raises(tcomp.errors.TcompError, match="tied to an output projection"):
        tcomp.optimize(Tied().eval(), torch.randint(0, 100, (2, 7)), passes=["quantize.int8_embedding"])


@pytest.mark.parametrize(
    "backend, target",
    [
        pytest.param("onnxruntime", "cpu", marks=pytest.mark.skipif(not HAVE_ORT, reason="no ONNX Runtime")),
        pytest.param("triton", "h100", marks=pytest.mark.skipif(
            not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"), reason="no GPU, no interpreter")),
    ],
)  # fmt: skip
def test_backends_run_the_quantized_lookups(backend, target, tmp_path):
    m, x = _bert()
    om = tcomp.optimize(m, x, target=target, backend=backend, passes=["quantize.int8_embedding"], cudagraphs=False)
    assert om.report.passes[-1].status == "applied", om.report.passes[-1].reason
    ref = tcomp.optimize(m, x, passes=["quantize.int8_embedding"])  # eager reference ops
    ids = torch.randint(1, 1000, (2, 11))
    mask = torch.ones(2, 11, dtype=torch.long)
    with torch.no_grad():
        torch.testing.assert_close(om(input_ids=ids, attention_mask=mask), ref(input_ids=ids, attention_mask=mask),
                                   rtol=1e-4, atol=1e-5)  # fmt: skip
    if backend == "onnxruntime":
        om.save(str(tmp_path / "a"))
        again = tcomp.load(str(tmp_path / "a"))
        with torch.no_grad():
            torch.testing.assert_close(again(input_ids=ids, attention_mask=mask), om(input_ids=ids, attention_mask=mask))
