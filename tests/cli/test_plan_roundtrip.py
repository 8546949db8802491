"""An artifact folder keeps the plan that ran: ``plan.json`` (hashed in the manifest) re-runs with
``tcomp optimize SPEC --plan DIR/plan.json`` and gives the same graph."""

from __future__ import annotations

import hashlib
import json

from typer.testing import CliRunner

from tcomp.cli import app

runner = CliRunner()


def test_optimize_reruns_the_plan_an_artifact_saved(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    res = runner.invoke(
        app,
        [
            "optimize", "bert", "--passes", "quantize.int8_weight",
            "-O", "quantize.int8_weight.skip_first_last=false", "-o", str(first), "--json",
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    plan = json.loads((first / "plan.json").read_text())
    assert [s["pass"] for s in plan["steps"]] == ["canonicalize", "quantize.int8_weight"]
    assert plan["steps"][1]["options"]["skip_first_last"] is False  # the non-default option is kept
    assert plan["target"] == "cpu" and plan["backend"] == "eager"
    manifest = json.loads((first / "manifest.json").read_text())
    assert manifest["files"]["plan.json"] == hashlib.sha256((first / "plan.json").read_bytes()).hexdigest()

    # the saved plan checks as it is, then re-runs: same steps, same options, same graph
    res = runner.invoke(app, ["plan", "--plan", str(first / "plan.json")])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == plan
    res = runner.invoke(
        app, ["optimize", "bert", "--plan", str(first / "plan.json"), "-o", str(second), "--json"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads((second / "plan.json").read_text()) == plan
    assert (second / "graph_after.txt").read_text() == (first / "graph_after.txt").read_text()
    rows = [{k: r[k] for k in ("name", "status", "rewrites")} for r in json.loads(res.stdout)["passes"]]
    want = json.loads((first / "report.json").read_text())["passes"]
    assert rows == [{k: r[k] for k in ("name", "status", "rewrites")} for r in want]
    assert (
        rows[1]["name"] == "quantize.int8_weight"
        and rows[1]["status"] == "applied"
        and rows[1]["rewrites"] > 0
    )

    # a tampered plan.json is refused like any other file of the folder
    (first / "plan.json").write_text((first / "plan.json").read_text().replace("false", "true"))
    res = runner.invoke(app, ["verify", str(first)])
    assert res.exit_code == 2 and "plan.json" in res.output
