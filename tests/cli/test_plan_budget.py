"""`tcomp plan SPEC --max-error`: the planner's choice written as a plan that `tcomp optimize --plan`
runs again; bad budgets and mixed flags exit 2 with the reason."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tcomp.cli import app

runner = CliRunner()


def test_planned_plan_reruns(tmp_path):
    plan = tmp_path / "plan.json"
    res = runner.invoke(app, ["plan", "bert", "--max-error", "0.02", "--metric", "cos", "--objective", "memory",
                              "--candidates", "int8,int4_g32", "--batches", "4", "-o", str(plan)],
                        env={"COLUMNS": "200"})  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "held-back error" in res.output
    data = json.loads(plan.read_text())
    passes = [s["pass"] for s in data["steps"]]
    assert passes[0] == "canonicalize" and set(passes[1:]) <= {"quantize.int8_weight", "quantize.int4_weight"}
    assert len(passes) > 1  # the random zoo BERT has room under 2 %
    out = tmp_path / "out"
    res = runner.invoke(app, ["optimize", "bert", "--plan", str(plan), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "manifest.json").exists()


def test_bad_planner_flags_exit_2():
    res = runner.invoke(app, ["plan", "bert", "--max-error", "0"])
    assert res.exit_code == 2 and "budget > 0" in res.output
    res = runner.invoke(app, ["plan", "--max-error", "0.1"])
    assert res.exit_code == 2 and "give SPEC" in res.output
    res = runner.invoke(app, ["plan", "bert", "--max-error", "0.1", "--metric", "cosine"])
    assert res.exit_code == 2 and "metric='cosine'" in res.output
