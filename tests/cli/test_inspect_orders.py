"""``tcomp inspect``: the growth of each attention site's cost in N before and after ``--passes``, and the
cost rows (with their growth in N) of linear attention, quantized linears and token merging."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from tcomp.cli import app

runner = CliRunner()


def test_inspect_prints_per_site_order_before_and_after_rpe_fft():
    res = runner.invoke(
        app, ["inspect", "gpt-t5", "--passes", "attention.linear,attention.rpe_fft", "--json"]
    )
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert len(d["site_orders"]) == 2
    for o in d["site_orders"]:
        assert o["before"] == {"kind": "attention", "flops": "O(N^2)"}
        assert o["after"] == {"kind": "rpe_attention", "flops": "O(N log N)"}
    assert "log(N)" in d["cost_symbolic_after"]["rpe_attention"]
    text = runner.invoke(app, ["inspect", "gpt-t5", "--passes", "attention.linear,attention.rpe_fft"]).output
    assert "site 1: attention O(N^2) FLOPs -> rpe_attention O(N log N)" in text


def test_inspect_prints_cost_rows_of_linear_attention_and_quantized_linears():
    passes = "attention.linear,quantize.int8_weight"
    res = runner.invoke(app, ["inspect", "gpt-rope", "--passes", passes, "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    kinds = {r["kind"] for r in d["cost_after"]}
    assert {"linear_attention", "qlinear", "all"} <= kinds and "attention" not in kinds
    assert d["cost_orders"]["attention"]["flops"] == "O(N^2)"
    assert d["cost_orders_after"]["linear_attention"] == {"flops": "O(N)", "bytes": "O(N)"}
    assert d["cost_orders_after"]["qlinear"]["flops"] == "O(N)"
    by = {(r["kind"], r["seq"]): r for r in d["cost_after"]}
    assert by[("linear_attention", 2048)]["gflops"] == pytest.approx(
        4 * by[("linear_attention", 512)]["gflops"]
    )
    text = runner.invoke(app, ["inspect", "gpt-rope", "--passes", passes]).output
    assert f"cost after {passes.replace(',', ', ')}" in text
    assert f"linear_attention after {passes.replace(',', ', ')}: O(N) FLOPs, O(N) bytes; flops =" in text
    assert f"qlinear after {passes.replace(',', ', ')}: O(N) FLOPs, O(N) bytes; flops =" in text


class _Merging(torch.nn.Module):
    """A projection, one token merge step (r = 2) and an output projection."""

    def __init__(self) -> None:
        super().__init__()
        self.k, self.out = torch.nn.Linear(16, 16), torch.nn.Linear(16, 16)

    def forward(self, x):
        b, n, c = x.shape
        k = self.k(x).view(b, n, 2, 8).transpose(1, 2)
        y = torch.ops.tcomp.token_merge(x, k, None, None, 2, [0])[0]
        return self.out(y)


def test_inspect_prints_cost_rows_of_token_merge(tmp_path):
    x = torch.randn(2, 9, 16)
    seq = torch.export.Dim("seq", min=6)
    ep = torch.export.export(_Merging(), (x,), dynamic_shapes=({0: torch.export.Dim("batch"), 1: seq},))
    path = tmp_path / "merge.pt2"
    torch.export.save(ep, str(path))
    res = runner.invoke(app, ["inspect", str(path), "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert {r["kind"] for r in d["cost"]} == {"token_merge", "linear", "all"}
    assert d["cost_orders"]["token_merge"] == {"flops": "O(N^2)", "bytes": "O(N)"}
    text = runner.invoke(app, ["inspect", str(path)]).output
    assert "token_merge: O(N^2) FLOPs, O(N) bytes; flops =" in text
