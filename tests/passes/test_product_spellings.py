"""Attention whose q @ k^T is spelt ``baddbmm`` with a bias folded in (Bloom's ALiBi) or ``einsum``
(heads-first and sequence-first layouts, the PV product too) becomes one ``tcomp.attention`` with
the bias kept exact: canonicalize applies under its FP_EQUIVALENT check against float64, and the
site's bias is the folded one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tcomp


class Spelt(nn.Module):
    def __init__(self, spelling: str, d: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.h, self.spelling = heads, spelling
        slopes = torch.tensor([2.0 ** (-8 * (i + 1) / heads) for i in range(heads)])
        self.register_buffer("slopes", slopes)

    def forward(self, x):
        b, n, d = x.shape
        h, hd = self.h, d // self.h
        q, k, v = self.qkv(x).view(b, n, 3, h, hd).unbind(2)  # (b, n, h, hd) each
        if self.spelling == "baddbmm":  # Bloom: ALiBi folded into the product
            q, k, v = (t.transpose(1, 2).reshape(b * h, n, hd) for t in (q, k, v))
            pos = torch.arange(n, device=x.device, dtype=x.dtype)
            alibi = (self.slopes[:, None] * pos[None, :]).repeat(b, 1)[:, None, :]  # (b*h, 1, n)
            s = torch.baddbmm(alibi, q, k.transpose(1, 2), beta=1.0, alpha=hd**-0.5)
            o = torch.bmm(torch.softmax(s, -1), v).view(b, h, n, hd).transpose(1, 2)
        elif self.spelling == "einsum-heads-first":
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
            s = torch.einsum("bhqd,bhkd->bhqk", q, k) * hd**-0.5
            o = torch.einsum("bhqk,bhkd->bhqd", torch.softmax(s, -1), v).transpose(1, 2)
        else:  # einsum on (b, n, h, hd) directly
            s = torch.einsum("bqhd,bkhd->bhqk", q, k) / hd**0.5
            o = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s, -1), v)
        return self.out(o.reshape(b, n, d))


@pytest.mark.parametrize("spelling", ["baddbmm", "einsum-heads-first", "einsum-seq-first"])
def test_spelling_becomes_one_attention_site(spelling):
    torch.manual_seed(0)
    model = Spelt(spelling).eval()
    x = torch.randn(2, 7, 32)
    om = tcomp.optimize(model, (x,), target="cpu", strict=True)
    rec = om.report["canonicalize"]
    assert rec.status == "applied" and rec.error <= rec.tolerance, (rec.status, rec.reason)
    assert len(om.report.sites) == 1 and om.report.unmatched == []
    site = om.report.sites[0]
    assert site["bias"] == (spelling == "baddbmm") and abs(site["scale"] - 8**-0.5) < 1e-12, site
    y = torch.randn(3, 11, 32)  # another batch and length: the dynamic graph
    with torch.no_grad():
        torch.testing.assert_close(om(y), model(y), rtol=1e-5, atol=1e-6)
