"""``torch.compile(model, backend="tcomp")``: outputs equal eager and every attention layer becomes
one ``tcomp.attention`` node in the compiled graph(s). Inference only."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tcomp.dynamo as td
from tcomp import models as zoo

RTOL, ATOL = 1e-4, 1e-5
ATTN = "torch.ops.tcomp.attention.default"


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    td.clear_reports()
    yield
    torch._dynamo.reset()
    td.clear_reports()


class Attn(nn.Module):
    """Two self-attention layers written either with SDPA or with an explicit softmax."""

    def __init__(self, explicit: bool, dim: int = 32, heads: int = 4, layers: int = 2):
        super().__init__()
        self.explicit, self.heads = explicit, heads
        self.qkv = nn.ModuleList(nn.Linear(dim, 3 * dim) for _ in range(layers))
        self.out = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))

    def forward(self, x):
        b, n, d = x.shape
        for qkv, out in zip(self.qkv, self.out):
            q, k, v = qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            if self.explicit:
                s = 1.0 / math.sqrt(d // self.heads)
                a = torch.softmax(q @ k.transpose(-2, -1) * s, dim=-1) @ v
            else:
                a = F.scaled_dot_product_attention(q, k, v)
            x = x + out(a.transpose(1, 2).reshape(b, n, d))
        return x


def _sites(spelling: str | None = None) -> int:
    reps = [r for r in td.reports() if r.mode == "inference"]
    assert reps, "the tcomp backend compiled no inference graph"
    return sum(sum(1 for s in r.spellings if spelling is None or s == spelling) for r in reps)


def _check_graphs():
    for r in td.reports():
        assert not any("rolled back" in n for n in r.notes), r.notes
        assert ATTN in r.code or r.attention_sites == 0


@pytest.mark.parametrize("explicit", [False, True], ids=["sdpa", "explicit-softmax"])
def test_small_attention(explicit):
    torch.manual_seed(0)
    m = Attn(explicit).eval()
    x = torch.randn(2, 8, 32)
    with torch.no_grad():
        ref = m(x)
        out = torch.compile(m, backend="tcomp")(x)
    torch.testing.assert_close(out, ref, rtol=RTOL, atol=ATOL)
    assert _sites("decomposed" if explicit else "sdpa") == 2
    assert _sites() == 2
    _check_graphs()
    rep = td.reports()[0]
    # the IR is torch.export's: SDPA, linear (and matmul) kept whole by AOTAutograd
    assert "aten.linear.default" in rep.aten_code
    if not explicit:
        assert "aten.scaled_dot_product_attention.default" in rep.aten_code


@pytest.mark.parametrize("name", ["bert", "bert-eager"])
def test_zoo_bert(name):
    e = zoo.get(name)
    with torch.no_grad():
        ref = e.model(*e.example_inputs, **e.example_kwargs)
        out = torch.compile(e.model, backend="tcomp")(*e.example_inputs, **e.example_kwargs)
    torch.testing.assert_close(out, ref, rtol=RTOL, atol=ATOL)
    assert e.n_attention_layers > 0
    assert _sites() == e.n_attention_layers
    _check_graphs()


def test_options_and_new_shape():
    """options reach the backend; another sequence length recompiles and is canonicalized too."""
    torch.manual_seed(0)
    m = Attn(explicit=False, layers=1).eval()
    c = torch.compile(m, backend="tcomp", options={"backend": "eager"})
    with torch.no_grad():
        for n in (8, 12):
            x = torch.randn(2, n, 32)
            torch.testing.assert_close(c(x), m(x), rtol=RTOL, atol=ATOL)
    reps = td.reports()
    assert len(reps) >= 1 and all(r.backend == "eager" and r.attention_sites == 1 for r in reps)


def test_plan_of_the_options():
    """No passes: canonicalize alone (not the default pipeline); a bare pass name is refused with
    the list to write instead of being read letter by letter."""
    from tcomp.errors import InputError

    assert [s.name for s in td.build_dynamo_plan({}).steps] == ["canonicalize"]
    plan = td.build_dynamo_plan({"passes": [("tokens.merge", {"r": 1})]})
    assert [s.name for s in plan.steps] == ["canonicalize", "tokens.merge"]
    with pytest.raises(InputError, match=r"passes= is a list of passes.*write \['tokens.merge'\]"):
        td.build_dynamo_plan({"passes": "tokens.merge"})


def test_training_graph_untouched():
    m = Attn(explicit=False, layers=1)
    x = torch.randn(2, 8, 32)
    out = torch.compile(m, backend="tcomp")(x)
    out.sum().backward()
    assert td.reports() and td.reports()[0].mode == "training"
    assert m.qkv[0].weight.grad is not None


def test_registered_and_entry_point():
    assert torch._dynamo.lookup_backend("tcomp") is td.tcomp_backend
    assert "tcomp" in torch._dynamo.list_backends()
    # torch loading the `torch_dynamo_backends` entry point in a fresh interpreter: the import it
    # triggers must not register "tcomp" a second time (torch refuses duplicate names)
    code = (
        "from importlib.metadata import EntryPoint\n"
        "from torch._dynamo.backends import registry\n"
        "registry._lazy_import()\n"
        "registry._BACKENDS['tcomp'] = EntryPoint("
        "name='tcomp', value='tcomp.dynamo:tcomp_backend', group='torch_dynamo_backends')\n"
        "fn = registry.lookup_backend('tcomp')\n"
        "import tcomp.dynamo\n"
        "assert fn is tcomp.dynamo.tcomp_backend\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_mha_fast_path_is_named_with_the_way_out(fresh_dynamo):
    layer = torch.nn.TransformerEncoderLayer(32, 4, 64, batch_first=True).eval()
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        assert torch.allclose(torch.compile(layer, backend="tcomp")(x), layer(x), atol=1e-5)
    rep = td.reports()[-1]
    assert rep.attention_sites == 0
    assert any(
        "set_fastpath_enabled(False)" in n and "_transformer_encoder_layer_fwd" in n for n in rep.notes
    )
    torch._dynamo.reset()
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            assert torch.allclose(torch.compile(layer, backend="tcomp")(x), layer(x), atol=1e-5)
    finally:
        torch.backends.mha.set_fastpath_enabled(was)
    rep = td.reports()[-1]
    assert rep.attention_sites == 1 and not any("fast path" in n for n in rep.notes)
