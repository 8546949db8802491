"""optimize(max_error=...) on a small encoder: the returned model meets the budget on held-back
inputs measured here (not read from the report), the plan re-runs through passes=, a budget
nothing meets returns the exact model with the reason, and bad input is refused before any work."""

from __future__ import annotations

import copy

import pytest
import torch

import tcomp
from tcomp.errors import InputError
from tcomp.models.bert import Bert, BertConfig
from tcomp.plan import Plan
from tcomp.planner import metrics

CANDS = ["int8", "int4_g32", "w1", "emb_int8"]


def _model(seed: int = 0) -> Bert:
    torch.manual_seed(seed)
    return Bert(BertConfig(dim=64, depth=2, heads=4, intermediate=128)).eval()


def _batch(seed: int, rows: int = 6, n: int = 24) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(rows, n, dtype=torch.long)
    mask[: rows // 2, n - 1 - seed % 5 :] = 0
    return {"input_ids": torch.randint(1, 1000, (rows, n), generator=g), "attention_mask": mask}


def _state(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m.state_dict().items()}


@pytest.fixture(scope="module")
def planned():
    m = _model()
    before = _state(m)
    calib = [_batch(s) for s in range(1, 5)]  # the planner holds back the last batch
    om = tcomp.optimize(m, _batch(0), max_error=0.01, metric="cos", pool="mean", objective="memory",
                        calibration=calib, candidates=CANDS)  # fmt: skip
    return m, before, calib, om


def _cos_error(om, m, batches) -> float:
    with torch.no_grad():
        outs, refs = [om(**b) for b in batches], [m(**b) for b in batches]
    return metrics.error("cos", outs, refs, batches, "mean")


def test_plan_meets_the_budget_on_held_back_and_fresh_inputs(planned):
    m, before, calib, om = planned
    p = om.report.planner
    assert p["split"] == {"by": "batches", "fit": 3, "held_back": 1}
    assert p["chosen"], p  # random weights leave room: something is quantized
    assert _cos_error(om, m, calib[-1:]) <= 0.01
    assert _cos_error(om, m, [_batch(s) for s in (11, 12)]) <= 0.01 * 1.5  # unseen inputs: about the same
    names = {s.name for s in om.plan.steps}
    assert names - {"canonicalize"} <= {"quantize.int8_weight", "quantize.int4_weight", "binarize",
                                        "quantize.int8_embedding"}
    assert "embedding:embeddings.word" in p["chosen"]  # memory: the word table is the biggest single saving
    assert p["verifications"][-1]["saving"] > 0
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # the user's model untouched


def test_plan_json_reruns_to_the_same_model(planned):
    m, _before, calib, om = planned
    again = tcomp.optimize(m, _batch(0), passes=Plan.from_json(om.plan.to_json()), calibration=calib[:3])
    b = _batch(21)
    with torch.no_grad():
        assert torch.equal(again(**b), om(**b))


def test_estimates_and_checks_are_recorded(planned):
    _m, _before, _calib, om = planned
    p = om.report.planner
    measured = {(x["site"], x["candidate"]) for x in p["measured"]}
    assert all((s, c) in measured for s, c in p["chosen"].items())
    assert {c for _s, c in measured} <= set(CANDS)
    # the path is the estimated front: cumulative error and saving grow together
    front = [(x["load"], x["saving"]) for x in p["path"]]
    assert front and all(b[0] >= a[0] and b[1] > a[1] for a, b in zip(front, front[1:]))
    text = str(om.report)
    assert "plan under max_error=0.01" in text and "held-back error" in text


def test_budget_nothing_meets_returns_the_exact_model():
    m, calib = _model(2), [_batch(s) for s in range(1, 3)]
    om = tcomp.optimize(m, _batch(0), max_error=1e-15, metric="rel", calibration=calib, candidates=["int4_g32"])
    assert [s.name for s in om.plan.steps] == ["canonicalize"]
    assert "no plan meets max_error=1e-15" in om.report.planner["reason"]
    b = _batch(9)
    with torch.no_grad():
        torch.testing.assert_close(om(**b), m(**b), rtol=1e-5, atol=1e-5)


def test_deterministic_under_seed():
    m, calib = _model(3), [_batch(s) for s in range(1, 3)]
    runs = [tcomp.optimize(m, _batch(0), max_error=0.02, metric="rel", objective="memory", calibration=calib,
                           candidates=["int8", "int4_g32"], verify=False, seed=5) for _ in range(2)]  # fmt: skip
    assert runs[0].report.planner["chosen"]
    assert runs[0].report.planner["chosen"] == runs[1].report.planner["chosen"]
    assert runs[0].plan == runs[1].plan


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"max_error": 0.0}, "budget > 0"),
        ({"max_error": -1}, "budget > 0"),
        ({"max_error": float("nan")}, "budget > 0"),
        ({"max_error": 0.1, "metric": "cosine"}, "metric='cosine'"),
        ({"max_error": 0.1, "pool": "max"}, "pool='max'"),
        ({"max_error": 0.1, "objective": "speed"}, "objective='speed'"),
        ({"max_error": 0.1, "candidates": ["int9"]}, "did you mean 'int8'"),
        ({"max_error": 0.1, "passes": ["quantize.int8_weight"]}, "leave passes= out"),
        ({"max_error": 0.1, "calibration": None}, "needs calibration="),
        ({"max_error": 0.1, "calibration": {"input_ids": torch.randint(1, 9, (1, 8))}}, "one batch of 1 row"),
    ],
)
def test_bad_input_is_refused(kwargs, words):
    m = _model()
    kwargs = {"calibration": [_batch(1), _batch(2)], **kwargs}
    with pytest.raises(InputError, match=words.replace("(", r"\(").replace("?", r"\?")):
        tcomp.optimize(copy.deepcopy(m), _batch(0), **kwargs)


def test_calibration_of_the_wrong_shape_is_a_clear_error():
    m = _model()
    ok = _batch(1)
    bad = [ok, {"input_ids": torch.randint(1, 9, (4, 8, 3)), "attention_mask": ok["attention_mask"]}]
    with pytest.raises(InputError, match=r"calibration batch 1 does not fit the model.*input_ids"):
        tcomp.optimize(m, _batch(0), max_error=0.1, calibration=bad, candidates=["int8"])


def test_report_html_draws_the_front_and_the_checks(planned):
    from tcomp.report import render_module

    _m, _before, _calib, om = planned
    page = render_module(om)
    assert "<section id='planner'>" in page and "data-series='path'" in page
    p = om.report.planner
    assert page.count("class='check'") == len(p["verifications"])
    for site in p["chosen"]:
        assert site in page


def test_progress_names_each_measurement():
    m, calib = _model(4), [_batch(s) for s in range(1, 3)]
    heard: list[str] = []
    tcomp.optimize(m, _batch(0), max_error=0.01, objective="memory", calibration=calib, candidates=["emb_int8"],
                   verify=False, progress=heard.append)  # fmt: skip
    plan_steps = [h for h in heard if h.startswith("plan: ")]
    assert "plan: emb_int8 at embedding:embeddings.word (0/2)" in plan_steps
    assert plan_steps[-1] == "plan: measured (2/2)"
