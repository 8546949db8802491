"""Every softmax accounted for: a softmax that a product of two activations reaches, in a form
canonicalize cannot take, is listed in the report (``report.unmatched``) with the module and the
link that broke the match, warned about by the CLI and an error under ``strict=True``; a softmax
that is not attention (a classifier's) is not listed."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import tcomp
from tcomp.cli import app
from tcomp.outcome import UnmatchedAttention


class SoftCapped(nn.Module):
    """Attention with Gemma-2-style logit soft-capping, a baddbmm-folded bias in a second block (which
    canonicalize takes), and a classifier softmax at the end."""

    def __init__(self, d: int = 16, heads: int = 2, cap: float = 30.0) -> None:
        super().__init__()
        self.qkv, self.qkv2 = nn.Linear(d, 3 * d), nn.Linear(d, 3 * d)
        self.head = nn.Linear(d, 5)
        self.h, self.cap = heads, cap

    def _split(self, x, proj):
        b, n, d = x.shape
        q, k, v = proj(x).view(b, n, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        return q, k, v

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self._split(x, self.qkv)
        s = torch.matmul(q, k.transpose(-2, -1)) / (d // self.h) ** 0.5
        s = torch.tanh(s / self.cap) * self.cap  # soft-capping: not in tcomp.attention
        x = x + (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(b, n, d)
        q, k, v = (t.reshape(b * self.h, n, d // self.h) for t in self._split(x, self.qkv2))
        bias = x.new_zeros(b * self.h, n, n)
        s = torch.baddbmm(bias, q, k.transpose(1, 2), beta=1.0, alpha=(d // self.h) ** -0.5)
        x = x + (torch.softmax(s, -1) @ v).view(b, self.h, n, -1).transpose(1, 2).reshape(b, n, d)
        return torch.softmax(self.head(x), -1)  # a classifier: not attention


def spec():
    """``tests.passes.test_unmatched_softmax:spec``, a model spec for the command line."""
    torch.manual_seed(0)
    return SoftCapped().eval(), (torch.randn(2, 6, 16),)


def test_unmatched_attention_is_listed_with_the_link_and_strict_refuses_it():
    model, args = spec()
    om = tcomp.optimize(model, args, target="cpu")
    un = om.report.unmatched
    assert [u["why"] for u in un] == [
        "q @ k^T reaches the softmax through tanh (logit soft-capping), which tcomp.attention does not express"
    ], un
    assert len(om.report.sites) == 1  # the baddbmm spelling is attention canonicalize takes
    notes = " ".join(om.report["canonicalize"].notes)
    assert "unmatched attention softmax" in notes and "is not attention: no product of two activations" in notes
    with torch.no_grad():
        torch.testing.assert_close(om(*args), model(*args))
    with pytest.raises(UnmatchedAttention, match=r"strict=True: 1 attention site\(s\) stay softmax.*tanh"):
        tcomp.optimize(model, args, target="cpu", strict=True)


def test_a_model_whose_attention_all_matches_passes_strict():
    from tcomp.models import Bert, BertConfig

    model = Bert(BertConfig()).eval()
    om = tcomp.optimize(model, (torch.randint(0, 100, (2, 8)),), target="cpu", strict=True, verify=False)
    assert om.report.unmatched == [] and len(om.report.sites) == 2


def test_the_cli_warns_and_refuses_under_strict(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["optimize", "tests.passes.test_unmatched_softmax:spec", "-o", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert res.output.count("warning: attention at") == 1 and "soft-capping" in res.output
    res = runner.invoke(app, ["optimize", "tests.passes.test_unmatched_softmax:spec", "--strict", "-o", str(tmp_path / "b")])
    assert res.exit_code == 2 and "strict=True" in res.output
