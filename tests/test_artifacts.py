"""Artifact folders: save writes the runner, weights (safetensors), kernels and a manifest with
hashes; tcomp.load runs it without the original model's code and refuses tampered files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import tcomp
from tcomp import models as zoo
from tcomp.errors import InputError


def test_save_load_roundtrip_other_sizes(tmp_path):
    e = zoo.get("gpt-alibi")
    fast = tcomp.optimize(e.model, e.example_inputs, example_kwargs=e.example_kwargs)
    fast.save(tmp_path / "a")
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert {"runner.py", "weights.safetensors", "report.json", "graph_after.txt"} <= set(manifest["files"])
    assert "import pickle" not in (tmp_path / "a" / "runner.py").read_text()
    loaded = tcomp.load(tmp_path / "a")
    args, kwargs = e.make_inputs(3, 13, 4)
    with torch.no_grad():
        want, got = e.model(*args, **kwargs), loaded(*args, **kwargs)
    assert ((got - want).norm() / want.norm()).item() < 1e-5


def test_load_refuses_tampered_files(tmp_path):
    e = zoo.get("bert")
    tcomp.optimize(e.model, e.example_inputs, example_kwargs=e.example_kwargs, verify=False).save(
        tmp_path / "a"
    )
    w = tmp_path / "a" / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(InputError, match="weights.safetensors"):
        tcomp.load(tmp_path / "a")
    with pytest.raises(InputError, match="not a tcomp artifact"):
        tcomp.load(tmp_path)


def test_hf_model_output_structure_survives(tmp_path):
    pytest.importorskip("transformers")
    from tests.hf_zoo import make

    case = make("bert", "sdpa")
    tcomp.optimize(case.model, case.kwargs, verify=False).save(tmp_path / "a")
    loaded = tcomp.load(tmp_path / "a")
    with torch.no_grad():
        want, got = case.model(**case.kwargs), loaded(**case.kwargs)
    assert type(got) is type(want)
    assert torch.allclose(got.last_hidden_state, want.last_hidden_state, atol=1e-5)


def test_triton_lowered_artifact_carries_kernels(tmp_path):
    pytest.importorskip("triton")
    e = zoo.get("bert", batch=2, seq=12)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = e.model.to(dev)
    args = tuple(a.to(dev) for a in e.example_inputs)
    kwargs = {k: v.to(dev) for k, v in e.example_kwargs.items()}
    fast = tcomp.optimize(model, args, target="h200", example_kwargs=kwargs)
    assert fast.report["lower.triton"].status == "applied"
    fast.save(tmp_path / "a")
    kernels = {p.name: p.read_text() for p in (tmp_path / "a" / "kernels").glob("*.py")}
    assert all("@triton.jit" in text for text in kernels.values())
    # exactly the kernels this graph launches: the masked fp32 attention and its fused groups
    assert "tcomp_attn_fwd_mi.py" in kernels
    assert {n for n in kernels if n.startswith("tcomp_attn_fwd_")} == {"tcomp_attn_fwd_mi.py"}
    assert any(n.startswith("tcomp_fused_") for n in kernels)
    loaded = tcomp.load(tmp_path / "a", device=dev)
    with torch.no_grad():
        assert torch.allclose(loaded(*args, **kwargs), model(*args, **kwargs), atol=1e-5)


def test_artifacts_ask_the_backend_for_kernel_sources(monkeypatch):
    """tcomp/artifacts.py imports no backend: the kernels/ folder comes from the backend the
    report's applied steps name (``Backend.kernel_sources``)."""
    from types import SimpleNamespace

    import tcomp.backend as backend_mod
    from tcomp import artifacts

    assert "tcomp.backends" not in Path(artifacts.__file__).read_text()

    class Toy(backend_mod.Backend):
        name = "toy"

        def kernel_sources(self, gm):
            return {"toy_kernel.py": f"# {len(gm.graph.nodes)} nodes"}

    monkeypatch.setitem(backend_mod._BACKENDS, "toy", Toy())
    gm = torch.fx.symbolic_trace(torch.nn.ReLU())
    for steps, want in (
        ([("lower.toy", "applied")], {"toy_kernel.py": "# 3 nodes"}),
        ([("lower.toy", "skipped"), ("fuse.toy.elementwise", "applied")], {"toy_kernel.py": "# 3 nodes"}),
        ([("lower.toy", "rolled_back")], {}),
        ([("canonicalize", "applied")], {}),
    ):
        report = SimpleNamespace(passes=[SimpleNamespace(name=n, status=s) for n, s in steps])
        assert artifacts.kernel_sources(SimpleNamespace(report=report, graph_module=gm)) == want


def test_save_writes_the_plan_that_ran(tmp_path):
    from tcomp.plan import Plan

    e = zoo.get("gpt-alibi")
    passes = [("quantize.int4_weight", {"group": 32, "skip_first_last": False})]
    fast = tcomp.optimize(
        e.model, e.example_inputs, passes=passes, example_kwargs=e.example_kwargs, verify=False
    )
    fast.save(tmp_path / "a")
    text = (tmp_path / "a" / "plan.json").read_text()
    assert (
        text == fast.plan.to_json()
        and "plan.json" in json.loads((tmp_path / "a" / "manifest.json").read_text())["files"]
    )
    again = Plan.from_json(text)
    assert again == fast.plan and again.steps[1].options.group == 32
    rerun = tcomp.optimize(
        e.model, e.example_inputs, passes=again, example_kwargs=e.example_kwargs, verify=False
    )
    assert rerun.code == fast.code and rerun.report["quantize.int4_weight"].rewrites > 0
    (tmp_path / "a" / "plan.json").write_text(text.replace("32", "64"))
    with pytest.raises(InputError, match="plan.json"):
        tcomp.load(tmp_path / "a")
