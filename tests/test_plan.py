"""The typed Plan: names and options checked before any work, user lists ordered by the passes'
constraints, JSON that builds the same plan again, one builder for optimize, the CLI and dynamo."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from typer.testing import CliRunner

import tcomp
import tcomp.dynamo as td
from tcomp.cli import app
from tcomp.errors import InputError, PassError
from tcomp.options import OptionError, option
from tcomp.pipeline import EXACT, PassResult, register_pass
from tcomp.plan import Plan, build_plan
from tests.attention_zoo import AttnSpec, build, inputs


class _Counting(torch.nn.Module):
    """Wraps a model and counts forward calls: a plan error must come before capture runs it."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, *args):
        self.calls += 1
        return self.inner(*args)


def _model(layers: int = 2):
    spec = AttnSpec(spelling="sdpa", mask="bool", heads=2, head_dim=8)
    return build(spec, layers=layers, seed=3), inputs(spec, 2, 6, padded=True, seed=4)


def test_misspelt_option_lists_the_valid_ones_and_the_nearest_before_capture():
    model, args = _model()
    counted = _Counting(model)
    with pytest.raises(OptionError) as err:
        tcomp.optimize(counted, args, passes=[("quantize.int4_weight", {"group_size": 64})], backend="eager")
    msg = str(err.value)
    assert "'quantize.int4_weight'" in msg and "'group_size'" in msg
    assert "did you mean 'group'?" in msg and "skip_first_last" in msg and "include" in msg
    assert counted.calls == 0  # nothing was captured or run
    with pytest.raises(OptionError, match="has no option 'feature'.*did you mean 'feature_map'"):
        build_plan("cpu", [("attention.linear", {"feature": "favor"})])
    with pytest.raises(OptionError, match="takes no options|valid options: none"):
        build_plan("cpu", [("canonicalize", {"strict": True})])


@pytest.mark.parametrize(
    "spec, words",
    [
        (("quantize.int4_weight", {"group": 48}), ["group=48", "one of 32, 64, 128"]),
        (("attention.linear", {"feature_map": "favour"}), ["one of", "did you mean 'favor'"]),
        (("attention.linear", {"num_features": 0}), ["num_features=0", "out of range [1, inf)"]),
        (("quantize.int4_gptq", {"damp": 1.0}), ["damp=1.0", "out of range (0.0, 1.0)"]),
        (("tokens.merge", {"r": 2, "inflect": 3.0}), ["inflect=3.0", "[-1.0, 1.0]"]),
        (("tokens.merge", {"r": (1, -1)}), ["out of range [0, inf)"]),
        (("tokens.merge", {"r": "2"}), ["expected int | tuple[int, ...] | None, got str"]),
        (("binarize", {"activations": 1}), ["expected bool, got int"]),
        (("tokens.merge", {}), ["exactly one of r="]),
        (("attention.linear", {"layers": "auto"}), ["calibration"]),
    ],
)
def test_bad_values_are_errors_naming_the_pass(spec, words):
    with pytest.raises(OptionError) as err:
        build_plan("cpu", [spec])
    assert f"pass {spec[0]!r}" in str(err.value)
    for w in words:
        assert w in str(err.value)


def test_values_are_coerced_as_json_writes_them():
    plan = build_plan("cpu", [("attention.softmax_free", {"scales": [1, 2]})])
    opts = plan.steps[-1].options
    assert opts.scales == (1.0, 2.0) and all(isinstance(s, float) for s in opts.scales)


def test_unknown_names_suggest_the_nearest():
    with pytest.raises(
        PassError, match=r"unknown pass 'attention.lineer' \(did you mean 'attention.linear'\?\)"
    ):
        build_plan("cpu", ["attention.lineer"])
    with pytest.raises(
        InputError, match=r"unknown target 'h10' \(did you mean 'h100'\?\); valid targets: .*h200"
    ):
        build_plan("h10", [])
    with pytest.raises(
        InputError, match=r"unknown backend 'trition' \(did you mean 'triton'\?\); valid backends"
    ):
        build_plan("cpu", [], "trition")


@dataclass(frozen=True)
class _Noop:
    note: str = option("", help="a note to leave")


def _noop(gm, opts, ctx):
    return PassResult(gm, 0, [opts.note])


register_pass("test.plan.late", EXACT, options=_Noop, after=("test.plan.early",))(_noop)
register_pass("test.plan.early", EXACT, options=_Noop, after=("canonicalize",), before=("test.plan.mid",))(
    _noop
)
register_pass("test.plan.mid", EXACT, options=_Noop)(_noop)
register_pass("test.plan.cycle_a", EXACT, options=_Noop, after=("test.plan.cycle_b",))(_noop)
register_pass("test.plan.cycle_b", EXACT, options=_Noop, after=("test.plan.cycle_a",))(_noop)


def test_user_list_is_ordered_by_the_declared_constraints():
    plan = build_plan(
        "cpu", ["test.plan.late", "test.plan.mid", ("test.plan.early", {"note": "x"}), "canonicalize"]
    )
    assert [s.name for s in plan.steps] == [
        "canonicalize",
        "test.plan.early",
        "test.plan.late",
        "test.plan.mid",
    ]
    assert plan.steps[1].options.note == "x"
    # canonicalize is added when missing, and goes first
    plan = build_plan("cpu", ["attention.linear"])
    assert [s.name for s in plan.steps] == ["canonicalize", "attention.linear"]


def test_a_cycle_is_an_error_naming_its_passes():
    with pytest.raises(PassError, match="cycle") as err:
        build_plan("cpu", ["test.plan.cycle_a", "test.plan.cycle_b"])
    assert "test.plan.cycle_a" in str(err.value) and "test.plan.cycle_b" in str(err.value)


def test_plan_json_round_trip_and_rerun_gives_the_same_graph():
    model, args = _model()
    passes = [
        ("attention.linear", {"feature_map": "favor", "num_features": 16}),
        ("quantize.int8_weight", {}),
    ]
    first = tcomp.optimize(model, args, passes=passes, backend="eager", seed=7, verify=False)
    text = first.plan.to_json()
    again = Plan.from_json(text)
    assert again == first.plan and again.to_json() == text
    assert json.loads(text)["steps"][1] == {
        "pass": "attention.linear",
        "options": {**json.loads(text)["steps"][1]["options"], "feature_map": "favor", "num_features": 16},
    }
    # the JSON steps are accepted by passes= again; the seed comes with the plan
    second = tcomp.optimize(model, args, passes=again, verify=False)
    steps_only = tcomp.optimize(
        model, args, passes=json.loads(text)["steps"], backend="eager", seed=7, verify=False
    )
    assert second.code == first.code == steps_only.code
    with torch.no_grad():
        want = first(*args)
        assert torch.equal(second(*args), want) and torch.equal(steps_only(*args), want)
        other_seed = tcomp.optimize(model, args, passes=passes, backend="eager", seed=8, verify=False)
        assert not torch.equal(other_seed(*args), want)  # the FAVOR+ features do come from the seed


def test_the_three_faces_build_the_same_plan():
    model, args = _model(layers=1)
    passes = [("tokens.merge", {"r": 1}), ("attention.linear", {"feature_map": "relu"})]
    om = tcomp.optimize(model, args, passes=passes, backend="eager", verify=False, on_failure="skip")
    res = CliRunner().invoke(
        app,
        ["plan", "--target", "cpu", "--backend", "eager", "--passes", "tokens.merge,attention.linear",
         "-O", "tokens.merge.r=1", "--option", "attention.linear.feature_map=relu"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    cli = json.loads(res.stdout)
    torch._dynamo.reset()
    td.clear_reports()
    try:
        compiled = torch.compile(
            model, backend="tcomp", options={"passes": passes, "backend": "eager", "target": "cpu"}
        )
        with torch.no_grad():
            compiled(*args)
        dyn = td.reports()[0].plan
    finally:
        torch._dynamo.reset()
        td.clear_reports()
    want = om.plan.to_dict()
    assert [s["pass"] for s in want["steps"]] == ["canonicalize", "tokens.merge", "attention.linear"]
    assert dyn == want and cli == want
    # and the CLI runs a plan file as written
    assert Plan.from_json(cli) == om.plan


def test_cli_plan_file_and_bad_option_exit_codes(tmp_path):
    runner = CliRunner()
    good = tmp_path / "plan.json"
    good.write_text(json.dumps([{"pass": "quantize.int8_weight", "options": {"skip_first_last": False}}]))
    res = runner.invoke(app, ["plan", "--plan", str(good)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["steps"][1]["options"]["skip_first_last"] is False
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"pass": "quantize.int8_weight", "options": {"skip_first": False}}]))
    res = runner.invoke(app, ["optimize", "no-such-model", "--plan", str(bad), "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "did you mean 'skip_first_last'" in res.output  # before loading the model


def test_dynamo_refuses_a_misspelt_option_before_compiling():
    model, args = _model(layers=1)
    torch._dynamo.reset()
    try:
        compiled = torch.compile(model, backend="tcomp", options={"passes": [("tokens.merge", {"rr": 1})]})
        with pytest.raises(Exception, match="did you mean 'r'"):
            compiled(*args)
    finally:
        torch._dynamo.reset()
        td.clear_reports()
