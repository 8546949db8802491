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
    # every pass's options come from its dataclass: type, default, range, allowed values, help
    group = {o["name"]: o for o in rows["quantize.int4_gptq"]["options"]}
    assert group["group"]["type"] == "int" and group["group"]["default"] == 128
    assert group["group"]["choices"] == [32, 64, 128] and group["damp"]["range"] == "(0.0, 1.0)"
    assert all(o["help"] for r in rows.values() for o in r["options"])
    assert rows["canonicalize"]["options"] == [] and "canonicalize" in rows["tokens.merge"]["after"]


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


def test_verify_and_run_an_artifact(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from tcomp import models as zoo

    out = tmp_path / "art"
    assert runner.invoke(app, ["optimize", "bert", "-o", str(out)]).exit_code == 0
    res = runner.invoke(app, ["verify", str(out), "--model", "bert", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["ok"] and d["rel_error"] < 1e-5
    e = zoo.get("bert")  # the same weights as the artifact's (seed 0)
    args, kwargs = e.make_inputs(3, 9, 3)  # another batch size and length
    save_file({"input_ids": args[0], **kwargs}, str(tmp_path / "in.safetensors"))
    res = runner.invoke(
        app,
        ["run", str(out), "--input", str(tmp_path / "in.safetensors"), "-o", str(tmp_path / "o.safetensors")],
    )
    assert res.exit_code == 0, res.output
    got = next(iter(load_file(str(tmp_path / "o.safetensors")).values()))
    with torch.no_grad():
        want = e.model(*args, **kwargs)
    assert torch.allclose(got, want, atol=1e-5)
    (out / "runner.py").write_text("# tampered\n")
    res = runner.invoke(app, ["verify", str(out)])
    assert res.exit_code == 2 and "runner.py" in res.output


def test_rasp_commands_hang_under_the_main_command(tmp_path):
    prog = tmp_path / "p.py"
    res = runner.invoke(app, ["rasp", "--help"])
    assert res.exit_code == 0 and all(c in res.output for c in ("extract", "compile", "run"))
    res = runner.invoke(app, ["rasp", "run", str(prog), "1 2"])
    assert res.exit_code == 2  # no such program file: a clear error, not a traceback
