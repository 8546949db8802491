"""The pass registry and the verified pipeline: contracts are enforced, a pass that breaks its
contract is rolled back with the reason, ordering constraints hold, snapshots are kept."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

import tcomp
from tcomp.capture import capture
from tcomp.errors import PassError
from tcomp.options import option
from tcomp.pipeline import Contract, Exactness, PassResult, get_pass, order, register_pass, run_pipeline
from tcomp.verify import Reference
from tests.attention_zoo import AttnSpec, build, inputs

aten = torch.ops.aten


def _model():
    spec = AttnSpec(spelling="sdpa", mask="bool")
    return build(spec, layers=2), inputs(spec, 2, 6, padded=True)


def test_registry_refuses_approximate_passes_without_bound_or_metric():
    with pytest.raises(PassError, match="BOUNDED"):
        Contract(Exactness.BOUNDED)
    with pytest.raises(PassError, match="EMPIRICAL"):
        Contract(Exactness.EMPIRICAL, metric="cosine")
    with pytest.raises(PassError, match="default"):
        register_pass(
            "test.approx_default", Contract(Exactness.EMPIRICAL, metric="rel", tolerance=0.1), default=True
        )
    with pytest.raises(PassError, match="lowercase"):
        register_pass("Test.Bad", tcomp.pipeline.EXACT)
    with pytest.raises(PassError, match="unknown pass"):
        get_pass("no.such.pass")


def test_pipeline_reexports_the_names_of_contract_and_registry():
    """Passes, backends and users import from tcomp.pipeline; the names are the same objects as in
    their homes (tcomp.contract, tcomp.registry), so a pass registered either way is one pass."""
    import tcomp.contract
    import tcomp.pipeline
    import tcomp.registry

    for name in tcomp.pipeline.__all__:
        assert hasattr(tcomp.pipeline, name), name
        for home in (tcomp.contract, tcomp.registry):
            if hasattr(home, name):
                assert getattr(tcomp.pipeline, name) is getattr(home, name), name
    assert tcomp.pipeline.get_pass("canonicalize") is tcomp.registry.registered_passes()["canonicalize"]
    assert not hasattr(tcomp.contract, "register_pass") and not hasattr(tcomp.registry, "run_pipeline")


@dataclass(frozen=True)
class _ScaleOptions:
    factor: float = option(1.5, help="what the first output is multiplied by")


@register_pass("test.scale_output", Contract(Exactness.FP_EQUIVALENT), options=_ScaleOptions, after=("canonicalize",))
def _scale_output(gm, opts, ctx):
    """Multiplies the first output by ``factor`` while claiming FP equivalence: a broken pass."""
    factor = opts.factor
    out = next(n for n in gm.graph.nodes if n.op == "output")
    first = out.args[0][0]
    with gm.graph.inserting_before(out):
        scaled = gm.graph.call_function(aten.mul.Tensor, (first, factor))
    out.args = ((scaled, *out.args[0][1:]),)
    return PassResult(gm, rewrites=1)


@register_pass("test.identity_exact", Contract(Exactness.EXACT), after=("canonicalize",))
def _identity(gm, opts, ctx):
    """Rebuilds nothing, counts one rewrite: EXACT holds trivially."""
    return PassResult(gm, rewrites=1)


@register_pass("test.raises", Contract(Exactness.EXACT))
def _raises(gm, opts, ctx):
    """Always fails."""
    raise RuntimeError("boom")


def test_broken_pass_is_rolled_back_with_reason():
    model, args = _model()
    cap = capture(model, args)
    ref = Reference.build(model, args, {})
    res = run_pipeline(
        cap.gm, ["canonicalize", "test.scale_output", "test.raises", "test.identity_exact"], reference=ref
    )
    status = {r.name: r.status for r in res.records}
    assert status == {
        "canonicalize": "applied",
        "test.scale_output": "rolled_back",
        "test.raises": "rolled_back",
        "test.identity_exact": "applied",
    }
    broken = res.records[1]
    assert "contract broken" in broken.reason and broken.error > broken.tolerance
    assert "boom" in res.records[2].reason
    # the graph handed back is the last good one: still equivalent
    assert ref.error(res.gm) <= ref.fp_tolerance()
    assert [name for name, _ in res.snapshots] == ["captured", "canonicalize", "test.identity_exact"]


def test_the_same_pass_without_verification_is_applied():
    model, args = _model()
    cap = capture(model, args)
    res = run_pipeline(cap.gm, ["canonicalize", ("test.scale_output", {"factor": 2.0})])
    assert res.records[1].status == "applied"
    with torch.no_grad():
        assert torch.allclose(res.gm(*args), 2.0 * model(*args), atol=1e-5)


def test_ordering_constraints():
    assert order(["test.scale_output", "canonicalize"]) == ["canonicalize", "test.scale_output"]


def test_optimize_report_is_json_and_names_sites(tmp_path):
    model, args = _model()
    fast = tcomp.optimize(model, args)
    d = json.loads(fast.report.to_json())
    assert d["passes"][0]["name"] == "canonicalize" and d["passes"][0]["status"] == "applied"
    assert d["passes"][0]["error"] <= d["passes"][0]["tolerance"]
    assert [s["module"] for s in d["sites"]] == ["blocks.0", "blocks.1"]
    assert "attention" in d["cost_symbolic"] and "N**2" in d["cost_symbolic"]["attention"]
    text = str(fast.report)
    assert "canonicalize" in text and "blocks.1" in text
    manifest = json.loads(open(fast.save(tmp_path / "art")).read())
    assert {
        "report.json",
        "report.txt",
        "graph_before.txt",
        "graph_after.txt",
        "runner.py",
        "weights.safetensors",
    } <= set(manifest["files"])
    assert "tcomp.attention" in (tmp_path / "art" / "graph_after.txt").read_text()
    from tcomp.artifacts import check

    assert check(tmp_path / "art") == []
    (tmp_path / "art" / "report.json").write_text("{}")
    assert check(tmp_path / "art") == ["report.json"]


def test_optimize_rolls_back_and_keeps_working():
    model, args = _model()
    fast = tcomp.optimize(model, args, passes=["test.scale_output"], on_failure="skip")
    assert [r.name for r in fast.report.passes] == ["canonicalize", "test.scale_output"]
    assert fast.report["test.scale_output"].status == "rolled_back"
    with torch.no_grad():
        assert torch.allclose(fast(*args), model(*args), atol=1e-5)


def test_debug_prints_graph_per_pass(monkeypatch, capsys):
    model, args = _model()
    monkeypatch.setenv("TCOMP_DEBUG", "1")
    tcomp.optimize(model, args, verify=False)
    assert "[tcomp] after canonicalize" in capsys.readouterr().out


def test_optimize_names_each_step_as_it_starts():
    steps = []
    m = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU()).eval()
    tcomp.optimize(m, (torch.randn(2, 8),), target="cpu", progress=steps.append)
    assert steps[:3] == ["capture", "float64 reference", "canonicalize"]
    steps.clear()
    tcomp.optimize(m, (torch.randn(2, 8),), target="cpu", verify=False, progress=steps.append)
    assert steps == ["capture", "canonicalize"]


def test_lowering_after_an_approximate_pass_is_checked_against_the_previous_stage():
    pytest.importorskip("triton")
    torch.manual_seed(0)
    m = torch.nn.Sequential(
        torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)
    ).eval()
    fast = tcomp.optimize(
        m, (torch.randn(4, 32),), target="h200", passes=[("quantize.int8_weight", {"skip_first_last": False})]
    )
    rec = fast.report["lower.triton"]
    assert fast.report["quantize.int8_weight"].status == "applied"
    assert rec.status == "applied", rec.reason
    assert any("previous stage" in n for n in rec.notes) and rec.error > rec.tolerance


def test_fp_equivalent_step_after_runtime_rounding_may_drift_below_the_quantization_error():
    """A graph that rounds activations at run time (W8A8) turns last-bit differences into whole
    rounding steps, so an FP_EQUIVALENT step after it is accepted when its drift stays below the
    previous stage's own error and the result meets the approximate contract -- and only then,
    and only for such graphs (weight-only int8 keeps the float-sized check)."""
    torch.manual_seed(1)
    m = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16)).eval()
    x = (torch.randn(6, 32),)
    w8a8 = ("quantize.int8_dynamic", {"skip_first_last": False})
    base = tcomp.optimize(m, x, passes=[w8a8]).report["quantize.int8_dynamic"]
    assert base.status == "applied" and 0 < base.error < base.tolerance / 2
    e = base.error
    small = tcomp.optimize(m, x, passes=[w8a8, ("test.scale_output", {"factor": 1 + e / 4})])
    rec = small.report["test.scale_output"]
    assert rec.status == "applied", rec.reason
    assert any("rounded at run time" in n for n in rec.notes)
    large = tcomp.optimize(m, x, passes=[w8a8, ("test.scale_output", {"factor": 1 + 2 * e})], on_failure="skip")
    assert large.report["test.scale_output"].status == "rolled_back"
    weight_only = ("quantize.int8_weight", {"skip_first_last": False})
    plain = tcomp.optimize(m, x, passes=[weight_only, ("test.scale_output", {"factor": 1 + e / 4})], on_failure="skip")
    assert plain.report["test.scale_output"].status == "rolled_back"
