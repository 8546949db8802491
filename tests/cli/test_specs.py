"""The CLI on file and folder SPECs: a .pt2 program works like a zoo name; bad paths exit 2 with
a one-line error."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from tcomp import models as zoo
from tcomp.cli import app

runner = CliRunner()


def test_inspect_a_pt2_file(tmp_path):
    e = zoo.get("gpt-rope")
    path = tmp_path / "gpt.pt2"
    torch.export.save(torch.export.export(e.model, e.example_inputs, e.example_kwargs), str(path))
    res = runner.invoke(app, ["inspect", str(path), "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["model"] == "gpt.pt2" and len(d["sites"]) == e.n_attention_layers
    assert all(s["causal"] for s in d["sites"])


def test_bad_paths_exit_2(tmp_path):
    (tmp_path / "folder").mkdir()
    bad = tmp_path / "bad.pt2"
    bad.write_text("not a zip archive")
    for spec, words in (
        (str(tmp_path / "nope.pt2"), "no such file"),
        (str(tmp_path / "folder"), "config.json"),
        (str(bad), "cannot load it as a torch.export program"),
    ):
        res = runner.invoke(app, ["inspect", spec])
        assert res.exit_code == 2, (spec, res.output)
        assert words in res.output and len(res.output.strip().splitlines()) == 1, res.output
