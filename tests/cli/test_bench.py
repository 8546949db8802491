"""tcomp bench: tcomp vs eager vs torch.compile on a tiny zoo model; table, JSON, exit codes."""

from __future__ import annotations

import json
import math

from typer.testing import CliRunner

from tcomp.cli import app

runner = CliRunner()
FEW = ["--iters", "2", "--warmup", "1", "--rounds", "2"]


def test_bench_json_against_eager_and_inductor():
    res = runner.invoke(app, ["bench", "bert", "--target", "cpu", *FEW, "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["model"] == "bert" and d["target"] == "cpu" and d["backend"] == "eager"
    assert d["iters"] == 2 and d["rounds"] == 2
    assert d["passes"][0]["name"] == "canonicalize" and d["passes"][0]["status"] == "applied"
    rows = {r["name"]: r for r in d["rows"]}
    assert set(rows) == {"eager", "tcomp", "torch.compile"}
    for r in rows.values():
        for key in ("median_ms", "min_ms", "vs_eager", "vs_torch_compile"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["name"], key, r[key])
        assert r["min_ms"] <= r["median_ms"]
        assert 0 <= r["rel_error_vs_eager"] < 1e-4  # every variant computes the same function
    assert rows["eager"]["vs_eager"] == 1.0 and rows["torch.compile"]["vs_torch_compile"] == 1.0
    assert math.isclose(rows["tcomp"]["vs_eager"], rows["eager"]["median_ms"] / rows["tcomp"]["median_ms"])
    assert rows["torch.compile"]["setup_s"] > 0  # the first call compiled


def test_bench_table_and_exit_codes():
    res = runner.invoke(app, ["bench", "gpt-rope", "--no-compile", *FEW], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "median ms" in res.output and "vs eager" in res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip("│ ").startswith(("eager", "tcomp"))]
    assert len(lines) == 2 and "torch.compile" not in res.output.split("median of")[0].split("setup s")[1]
    res = runner.invoke(app, ["bench", "no-such-model"])
    assert res.exit_code == 2 and "unknown model" in res.output
    res = runner.invoke(app, ["bench", "bert", "--target", "tpu9"])
    assert res.exit_code == 2 and "tpu9" in res.output
