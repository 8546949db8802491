"""tokens.merge schedules and output modes: constant, inflection, explicit, keep-fraction; r capped
at half the mergeable tokens; pooled outputs in "merged" mode equal the unmerged-then-pooled ones."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tcomp.passes  # noqa: F401 - registers the passes
from tcomp import models
from tcomp.capture import capture
from tcomp.errors import PassError
from tcomp.models.vit import ViT, ViTConfig
from tcomp.passes.token_merge_schedule import resolve
from tcomp.pipeline import copy_graph_module, get_pass, run_pipeline
from tcomp.verify import rel_error

MERGE = get_pass("tokens.merge")


@given(
    sites=st.integers(1, 12),
    n=st.integers(2, 300),
    p=st.integers(0, 2),
    kind=st.sampled_from(["const", "inflect", "list", "keep"]),
    data=st.data(),
)
def test_schedules_are_capped_and_static(sites, n, p, kind, data):
    if kind == "const":
        opts = {"r": data.draw(st.integers(0, 40))}
    elif kind == "inflect":
        opts = {"r": data.draw(st.integers(0, 40)), "inflect": data.draw(st.floats(-1, 1))}
    elif kind == "list":
        opts = {"r": data.draw(st.lists(st.integers(0, 40), min_size=sites, max_size=sites))}
    else:
        opts = {"keep": data.draw(st.floats(0.05, 1.0))}
    rs = resolve(sites, n, p, **opts)
    assert len(rs) == sites and all(isinstance(r, int) and r >= 0 for r in rs)
    left = n
    for r in rs:  # never more than half the mergeable tokens of the block
        assert r <= max(0, (left - p) // 2)
        left -= r
    if kind == "const" and opts["r"] * 2 + p <= n - opts["r"] * sites:
        assert rs == [opts["r"]] * sites
    if kind == "keep":
        want = round((1 - opts["keep"]) * max(0, n - p))
        assert n - left <= want and max(rs) - min(rs) <= 1 + want  # spread evenly until capped


def test_inflection_direction_and_total():
    dec, inc = resolve(12, 197, 1, r=13, inflect=-0.5), resolve(12, 197, 1, r=13, inflect=0.5)
    assert dec == sorted(dec, reverse=True) and dec[0] > dec[-1]
    assert inc == sorted(inc) and inc[0] < inc[-1]
    assert abs(sum(dec) - 13 * 12) <= 6 and sum(dec) == sum(inc)


@pytest.mark.parametrize(
    "bad", [{}, {"r": 1, "keep": 0.5}, {"r": -1}, {"keep": 0.0}, {"r": [1, 2]}, {"r": 2, "inflect": 3.0}]
)
def test_bad_schedules_say_what_to_do(bad):
    with pytest.raises(ValueError, match="tokens.merge"):
        resolve(3, 20, 1, **bad)


class _MeanPoolViT(ViT):
    """The zoo ViT with mean pooling over all tokens instead of the CLS token."""

    def forward(self, pixels):
        x = self.patch_embed(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(1))


def _graph(model, x):
    return run_pipeline(capture(model, (x,)).gm, ["canonicalize"]).gm


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_merged_outputs_mode_pools_like_unmerge(pool):
    """CLS pooling reads the protected CLS token; mean pooling over merged tokens becomes the
    size-weighted mean, which is exactly the mean over the original (unmerged) tokens."""
    torch.manual_seed(0)
    cfg = ViTConfig(depth=3)
    model = (ViT if pool == "cls" else _MeanPoolViT)(cfg).eval()
    x = torch.randn(2, 3, 32, 32)
    gm = _graph(model, x)
    un = MERGE(copy_graph_module(gm), r=3)
    me = MERGE(copy_graph_module(gm), r=3, outputs="merged")
    gathers = [
        [n for n in res.gm.graph.nodes if n.target is torch.ops.aten.gather.default] for res in (un, me)
    ]
    assert gathers[0] and not gathers[1]  # "merged" mode: no unmerge, no source map
    with torch.no_grad():
        a, b, base = un.gm(x), me.gm(x), gm(x)
    assert rel_error(b, a) < 1e-5
    assert rel_error(a, base) > 1e-4  # the merge did change the function


def test_merged_outputs_mode_refuses_token_level_outputs():
    e = models.get("bert", depth=2)
    gm = run_pipeline(capture(e.model, e.example_inputs, e.example_kwargs).gm, ["canonicalize"]).gm
    with pytest.raises(PassError, match="token-level"):
        MERGE(copy_graph_module(gm), r=2, outputs="merged")
