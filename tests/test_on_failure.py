"""``optimize(on_failure=...)``: a pass the user named that ends rolled back or skipped everywhere is
an error by default (naming the measured error against the tolerance, or the reason), a warning
with "warn" and the report's business alone with "skip"; canonicalize and analysis passes are not
requests that can fail this way."""

from __future__ import annotations

import pytest
import torch

import tcomp
from tcomp.errors import InputError
from tcomp.models import Bert, BertConfig
from tcomp.outcome import PassFailed, PassFailedWarning


class MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(16, 32), torch.nn.Linear(32, 8)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def _bert():
    torch.manual_seed(0)
    return Bert(BertConfig()).eval(), (torch.randint(0, 100, (2, 12)),)


def test_a_rolled_back_pass_raises_with_its_error_and_sites():
    model, args = _bert()
    with pytest.raises(PassFailed, match=r"attention.linear did not apply \(rolled back: .*relative error [0-9.e-]+ > "
                       r"tolerance 1e-09; sites layers.0.attn, layers.1.attn\)"):  # fmt: skip
        tcomp.optimize(model, args, passes=[("attention.linear", {"tolerance": 1e-9})])


def test_warn_returns_what_applied_and_skip_is_silent(recwarn):
    model, args = _bert()
    passes = [("attention.linear", {"tolerance": 1e-9}), "quantize.int8_weight"]
    with pytest.warns(PassFailedWarning, match="attention.linear did not apply") as seen:
        om = tcomp.optimize(model, args, passes=passes, on_failure="warn")
    assert len([w for w in seen if issubclass(w.category, PassFailedWarning)]) == 1  # int8 applied: not named
    assert om.report["attention.linear"].status == "rolled_back" and om.report["quantize.int8_weight"].status == "applied"
    x = torch.randint(0, 100, (3, 9))
    with torch.no_grad():
        assert (om(x) - model(x)).norm() / model(x).norm() < 0.05
    recwarn.clear()
    om = tcomp.optimize(model, args, passes=passes, on_failure="skip")
    assert not [w for w in recwarn if issubclass(w.category, PassFailedWarning)]
    assert om.report["attention.linear"].status == "rolled_back"


def test_a_pass_with_nothing_to_rewrite_raises_unless_asked_not_to():
    model, x = MLP().eval(), torch.randn(4, 16)
    with pytest.raises(PassFailed, match=r"attention.linear did not apply \(skipped: nothing to rewrite\)"):
        tcomp.optimize(model, (x,), passes=["attention.linear"])
    om = tcomp.optimize(model, (x,), passes=["attention.linear"], on_failure="skip")
    assert om.report["attention.linear"].status == "skipped"
    tcomp.optimize(model, (x,))  # the default pipeline asks for nothing: canonicalize finding no site is fine
    with pytest.raises(InputError, match="on_failure='loud'.*'raise', 'warn', 'skip'"):
        tcomp.optimize(model, (x,), on_failure="loud")


def test_the_cli_stops_on_a_failed_pass_unless_told_to_go_on(tmp_path):
    from typer.testing import CliRunner

    from tcomp.cli import app

    runner = CliRunner()
    args = ["optimize", "bert", "--passes", "attention.linear", "-O", "attention.linear.tolerance=1e-9", "-o"]
    res = runner.invoke(app, [*args, str(tmp_path / "a")])
    assert res.exit_code == 2 and "attention.linear did not apply" in res.output and not (tmp_path / "a").exists()
    res = runner.invoke(app, [*args, str(tmp_path / "b"), "--on-failure", "skip"])
    assert res.exit_code == 1 and (tmp_path / "b" / "manifest.json").exists()  # written; a rollback still exits 1
