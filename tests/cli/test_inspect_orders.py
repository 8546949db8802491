"""``tcomp inspect --passes``: the growth of each attention site's cost in N before and after."""

from __future__ import annotations

import json

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
