"""The tcomp command: passes, inspect, optimize (artifact folder), exit codes."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tcomp.cli import app

runner = CliRunner()


def test_passes_lists_canonicalize_with_contract():
    res = runner.invoke(app, ["passes", "--json"])
    assert res.exit_code == 0
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["canonicalize"]["contract"] == "fp_equivalent" and rows["canonicalize"]["default"]


def test_inspect_shows_sites_and_cost():
    res = runner.invoke(app, ["inspect", "gpt-alibi", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert len(d["sites"]) == 2 and all(s["bias"] for s in d["sites"])
    assert {r["seq"] for r in d["cost"]} == {128, 512, 2048}
    att = [r for r in d["cost"] if r["kind"] == "attention"]
    assert att[-1]["gflops"] > 10 * att[0]["gflops"]  # quadratic in N
    text = runner.invoke(app, ["inspect", "bert"]).output
    assert "attention sites" in text and "layers.1.attn" in text


def test_optimize_writes_artifacts(tmp_path):
    out = tmp_path / "art"
    res = runner.invoke(app, ["optimize", "vit", "--target", "h200", "-o", str(out)])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["target"] == "h200" and rep["passes"][0]["status"] == "applied"
    assert json.loads((out / "manifest.json").read_text())["attention_sites"] == 2


def test_bad_spec_exit_code():
    res = runner.invoke(app, ["optimize", "no-such-model", "-o", "/tmp/x"])
    assert res.exit_code == 2 and "unknown model" in res.output
    res = runner.invoke(app, ["inspect", "nosuchpkg.mod:factory"])
    assert res.exit_code == 2 and "cannot load" in res.output
