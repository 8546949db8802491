"""report.html: rendered in a real headless browser (Debian chromium) from a saved artifact, and the
generator on its own: escaping, empty and rolled-back reports, the graph picture, the cost curves."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import tcomp
from tcomp import meta
from tcomp import models as zoo
from tcomp.artifacts import check
from tcomp.pipeline import EXACT, Pass, PassRecord, run_pipeline
from tcomp.report import Report, build_picture, cost_series, line_plot, render_html, rewritten_nodes

CHROMIUM = "/usr/bin/chromium"


# -- helpers -------------------------------------------------------------------------------------


class Page(HTMLParser):
    """The parts of a page the tests look at: text nodes, start tags with attributes."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.texts: list[str] = []
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data):
        self.texts.append(data)

    def find(self, tag: str, **attrs: str) -> list[dict[str, str]]:
        return [
            a
            for t, a in self.tags
            if t == tag and all(a.get(k.replace("_", "-")) == v for k, v in attrs.items())
        ]

    def with_class(self, tag: str, *classes: str) -> list[dict[str, str]]:
        return [a for t, a in self.tags if t == tag and set(classes) <= set(a.get("class", "").split())]


def _chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"{CHROMIUM} is missing: run `bash scripts/ensure_chromium.sh` (as root; `make test` does) "
            "to install Debian's chromium for the report.html browser test"
        )
    profile = tmp / f"chromium-profile-{len(list(tmp.glob('chromium-profile-*')))}"
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--hide-scrollbars", *args,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


class TinyAttention(nn.Module):
    """One SDPA block: small enough for the picture to draw node by node."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.qkv, self.out, self.heads = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), heads

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


def _broken(gm, **_):
    raise RuntimeError("deliberately broken <pass> & co")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """The zoo BERT optimized with verification, plus a real rolled-back pass, saved to a folder."""
    e = zoo.get("bert")
    om = tcomp.optimize(e.model, e.example_inputs, example_kwargs=e.example_kwargs)
    broken = run_pipeline(om.graph_module, [Pass("test.broken", _broken, EXACT)])
    om.report.passes += broken.records
    folder = tmp_path_factory.mktemp("art") / "bert"
    om.save(folder)
    return om, folder


# -- in the browser ------------------------------------------------------------------------------


def test_report_renders_in_headless_chromium(artifact, tmp_path):
    om, folder = artifact
    url = (folder / "report.html").resolve().as_uri()
    dom = Page(_chromium("--virtual-time-budget=3000", "--dump-dom", url, tmp=tmp_path).stdout)

    # the inline script ran and counted what it found in the DOM
    assert dom.find("html", data_rendered="1"), "the page's script did not run"
    (summary,) = dom.find("p", id="js-summary")
    n_sites = len(om.report.sites)
    assert n_sites == 2
    assert summary["data-passes"] == str(len(om.report.passes)) == "2"
    assert summary["data-attention"] == str(n_sites)

    # pass table: one row per pass with its status and rewrite count
    rows = {r["data-pass"]: r for r in dom.find("tr") if "data-pass" in r}
    assert set(rows) == {"canonicalize", "test.broken"}
    assert rows["canonicalize"]["class"] == "status-applied"
    assert rows["test.broken"]["class"] == "status-rolled_back"
    rewrites = om.report["canonicalize"].rewrites
    assert rewrites == n_sites
    assert f"{om.report.passes[0].rewrites}" in dom.texts
    assert any("deliberately broken <pass> & co" in t for t in dom.texts)

    # attention sites table and the highlighted attention boxes of the graph picture
    assert len([r for r in dom.find("tr") if "data-node" in r]) == n_sites
    assert dom.find("svg", id="graph-svg")
    boxes = dom.with_class("g", "gnode", "attention")
    assert len(boxes) == n_sites
    assert all(int(b["data-rewritten"]) >= 1 for b in boxes)  # canonicalize made these nodes
    assert {b["data-key"] for b in boxes} == {"attention #0", "attention #1"}
    # cost plots: before and after curves in each of the three plots
    assert len(dom.find("polyline", data_series="before")) == 3
    assert len(dom.find("polyline", data_series="after")) == 3


def test_report_script_sorts_pins_and_dims(artifact, tmp_path):
    """Drive the page's own script in the browser: sort a table, click a box, toggle the dimming."""
    _, folder = artifact
    page = tmp_path / "driven.html"
    drive = (
        "<script>var th=document.querySelector('#site-table th');th.click();th.click();"
        "document.querySelector('g.gnode.attention').dispatchEvent(new MouseEvent('click',{bubbles:true}));"
        "document.getElementById('focus').click();</script></body>"
    )
    page.write_text((folder / "report.html").read_text().replace("</body>", drive))
    out = _chromium("--virtual-time-budget=3000", "--dump-dom", page.resolve().as_uri(), tmp=tmp_path).stdout
    dom = Page(out)
    assert [r["data-node"] for r in dom.find("tr") if "data-node" in r] == [
        "attention_default_1",
        "attention_default",
    ]
    (pinned,) = dom.with_class("g", "gnode", "pinned")
    assert pinned["data-key"] == "attention #0"
    detail = re.search(r"<pre id=\"node-detail\"[^>]*>([^<]*)</pre>", out)[1]
    assert detail.startswith("attention #0 in layers.0.attn")
    assert "focus" in dom.find("svg", id="graph-svg")[0]["class"].split()


def test_missing_browser_fails_and_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", str(tmp_path / "no-chromium"))
    with pytest.raises(pytest.fail.Exception, match="scripts/ensure_chromium.sh"):
        _chromium("--version", tmp=tmp_path)


def test_report_screenshot_is_not_blank(artifact, tmp_path):
    from PIL import Image

    _, folder = artifact
    png = tmp_path / "report.png"
    _chromium("--virtual-time-budget=3000", "--window-size=1280,2400", f"--screenshot={png}",
              (folder / "report.html").resolve().as_uri(), tmp=tmp_path)  # fmt: skip
    img = Image.open(png).convert("RGB")
    assert img.size == (1280, 2400)
    px = torch.from_numpy(np.asarray(img, dtype=np.float32).reshape(-1, 3))
    assert px.std(dim=0).min() > 20, "screenshot is (nearly) one colour"
    dark = (px.sum(dim=1) < 200).float().mean()
    assert dark > 0.002, "hardly any text rendered"

    def near(rgb, tol=12):
        return ((px - torch.tensor(rgb, dtype=torch.float32)).abs().max(dim=1).values < tol).sum().item()

    # the two attention boxes' #c62828 frames give ~1200 such pixels; the rest of the page (the red
    # "rolled back" card, the over-bound error) ~500
    assert near((198, 40, 40)) > 1000, "no red attention-site highlight visible"
    assert near((21, 101, 192)) > 500, "no 'after' cost curve visible"  # #1565c0


def test_artifact_manifest_hashes_report_and_still_loads(artifact):
    om, folder = artifact
    manifest = json.loads((folder / "manifest.json").read_text())
    html = (folder / "report.html").read_bytes()
    assert manifest["files"]["report.html"] == hashlib.sha256(html).hexdigest()
    assert check(folder) == []
    text = html.decode()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text), (
        "report.html must not fetch anything"
    )
    assert "<link" not in text and "@import" not in text
    e = zoo.get("bert")
    loaded = tcomp.load(folder)
    args, kwargs = e.make_inputs(3, 9, 5)
    with torch.no_grad():
        want, got = e.model(*args, **kwargs), loaded(*args, **kwargs)
    assert ((got - want).norm() / want.norm()).item() < 1e-5
    (folder / "report.html").write_bytes(html.replace(b"attention", b"attentioN", 1))
    try:
        assert check(folder) == ["report.html"]
    finally:
        (folder / "report.html").write_bytes(html)


# -- the generator without a browser -------------------------------------------------------------

_TEXT = st.text(
    st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from("<>&\"'/"), min_size=1, max_size=30
)


@given(name=_TEXT, reason=_TEXT, note=_TEXT, module=_TEXT)
def test_user_text_is_escaped(name, reason, note, module):
    rec = PassRecord(name, f"bounded ({name})", "bounded", "rolled_back", 3, 0.5, 0.01, reason, [note])
    site = {"layer": 0, "node": name, "module": module, "spelling": "sdpa", "q": ["2", "4"], "k": ["2", "4"],
            "scale": 0.5, "source": note}  # fmt: skip
    rep = Report(model=module, target="cpu", passes=[rec], sites=[site], notes=[note])
    page = Page(render_html(rep))
    assert len(page.find("script")) == 1 and len(page.find("style")) == 1
    (row,) = [r for r in page.find("tr") if "data-pass" in r]
    assert row["data-pass"] == name
    for text in (name, reason, note, module):
        assert any(text in t for t in page.texts)
    assert f"tcomp report: {module} → cpu" in page.texts


def test_empty_report_says_what_is_missing():
    page = Page(render_html(Report(model="m", target="cpu")))
    texts = " ".join(page.texts)
    for expected in ("no passes ran", "no attention site in this graph", "the before graph is not available",
                     "no graph available"):  # fmt: skip
        assert expected in texts
    assert not page.find("svg", id="graph-svg")
    assert not page.find("table", id="pass-table")


def test_rolled_back_pass_row_shows_reason_and_error_over_bound():
    rec = PassRecord("x.approx", "bounded (|e| <= 1e-3)", "bounded", "rolled_back", 4, 0.02, 1e-3,
                     "bounded contract broken: relative error 0.02 > tolerance 0.001")  # fmt: skip
    ok = PassRecord("canonicalize", "fp_equivalent", "fp_equivalent", "applied", 2, 1e-7, 2e-6)
    html = render_html(Report(model="m", target="cpu", passes=[ok, rec]))
    page = Page(html)
    assert [r["class"] for r in page.find("tr") if "data-pass" in r] == [
        "status-applied",
        "status-rolled_back",
    ]
    assert "bounded contract broken: relative error 0.02 > tolerance 0.001" in page.texts
    assert page.with_class("td", "num", "over") and page.with_class("td", "num", "ok")
    assert page.with_class("div", "card", "bad")  # the "rolled back" card turns red


def test_picture_partitions_a_collapsed_graph(artifact):
    om, _ = artifact
    before = om.graph_before
    pic = build_picture(om.graph_module, before)
    assert pic.collapsed
    drawn = [n for b in pic.boxes for n in b.nodes]
    assert len(drawn) == len(set(drawn))  # every node in one box
    tensors = [n for n in om.graph_module.graph.nodes if n.op in ("placeholder", "output", "call_function")
               and not isinstance(n.meta.get(meta.VAL), torch.SymInt)]  # fmt: skip
    assert set(drawn) == set(tensors)
    g = nx.DiGraph(list(pic.edges))
    assert nx.is_directed_acyclic_graph(g)
    owner = {n: i for i, b in enumerate(pic.boxes) for n in b.nodes}
    for n in drawn:  # every data edge between boxes is drawn
        for a in n.all_input_nodes:
            if a in owner and owner[a] != owner[n]:
                assert (owner[a], owner[n]) in pic.edges
    sites = [b for b in pic.boxes if b.kind == "attention"]
    assert [b.nodes[0].meta[meta.ATTN_LAYER] for b in sites] == [0, 1]
    assert {n.name for n in rewritten_nodes(om.graph_module, before)} >= {b.nodes[0].name for b in sites}
    assert pic.bands.count("layers.0") == 1 and pic.bands.count("layers.1") == 1
    assert len(pic.boxes) < len(drawn) / 1.5


def test_small_graph_node_by_node_and_rewritten_by_mark():
    x = torch.randn(2, 5, 16)
    om = tcomp.optimize(TinyAttention().eval(), (x,), verify=False)
    gm = om.graph_module
    lin = next(
        n for n in gm.graph.nodes if n.op == "call_function" and n.target is torch.ops.aten.linear.default
    )
    lin.meta[meta.REWRITTEN_BY] = "test.mark"
    pic = build_picture(gm, om.graph_before)
    assert not pic.collapsed
    assert all(len(b.nodes) == 1 for b in pic.boxes)
    marked = [b for b in pic.boxes if b.rewritten]
    assert lin in [b.nodes[0] for b in marked]
    assert [b.kind for b in pic.boxes].count("attention") == 1
    page = Page(render_html(om.report, gm, om.graph_before))
    assert len([b for b in page.with_class("g", "gnode", "rewritten") if b["data-key"] == lin.name]) == 1
    assert any("[rewritten by test.mark]" in t for t in page.texts)


def test_module_paths_are_escaped_in_the_picture():
    x = torch.randn(2, 5, 16)
    om = tcomp.optimize(TinyAttention().eval(), (x,), verify=False)
    for n in om.graph_module.graph.nodes:
        if n.op == "call_function":
            n.meta[meta.NN_MODULE_STACK] = {"m": ("blk<i>&.0.attn", "X")}
    page = Page(render_html(om.report, om.graph_module))
    assert len(page.find("script")) == 1
    assert any("blk<i>&.0" in t for t in page.texts)


def test_cost_before_counts_the_materialized_scores():
    """bert-eager spells attention as matmul/softmax/matmul: before the passes the N×N score
    matrix is written by QKᵀ and read by PV in every layer; tcomp.attention never stores it."""
    e = zoo.get("bert-eager")
    om = tcomp.optimize(e.model, e.example_inputs, example_kwargs=e.example_kwargs, verify=False)
    seqs = (64, 512, 4096)
    before = cost_series(om.graph_before, "before", "cpu", seqs)
    after = cost_series(om.graph_module, "after", "cpu", seqs)
    assert before.values("seq") == list(seqs) == after.values("seq")
    cfg_heads, layers = 4, 2
    for n, mb_before, mb_after in zip(seqs, before.values("mb"), after.values("mb")):
        scores = layers * 2 * cfg_heads * n * n * 4 / 1e6  # fp32, batch 1: written once, read once
        assert math.isclose(mb_before - mb_after, scores, rel_tol=0.02)
    for f_before, f_after in zip(before.values("gflops"), after.values("gflops")):
        assert f_after >= f_before  # softmax flops are counted only in the fused op
        assert f_after < 1.2 * f_before


@given(st.lists(st.floats(1e-3, 1e9), min_size=2, max_size=8))
def test_line_plot_points_follow_the_values(ys):
    xs = [64 * 2**i for i in range(len(ys))]
    svg = line_plot("t <&>", xs, [("after", ys)])
    page = Page(svg)
    (poly,) = page.find("polyline")
    pts = [tuple(map(float, p.split(","))) for p in poly["points"].split()]
    assert [p[0] for p in pts] == sorted(p[0] for p in pts)
    for (_, ya), (_, yb), va, vb in zip(pts, pts[1:], ys, ys[1:]):
        # larger values are drawn higher (smaller svg y); points are rounded to 0.1 px
        if va < vb:
            assert ya >= yb and (ya > yb or vb < 1.05 * va)
        elif vb < va:
            assert ya <= yb and (ya < yb or va < 1.05 * vb)
    assert all(28 - 1e-6 <= y <= 240 - 38 + 1e-6 for _, y in pts)
    assert "t <&>" in page.texts


def test_fixed_sequence_length_gets_no_curve():
    e = zoo.get("vit")  # images: the token count is fixed by the patch grid
    om = tcomp.optimize(e.model, e.example_inputs, example_kwargs=e.example_kwargs, verify=False)
    before = cost_series(om.graph_before, "before", "cpu")
    assert before.fixed and len(before.values("seq")) == 1 and before.values("gflops")[0] > 0
    page = Page(render_html(om.report, om.graph_module, om.graph_before))
    assert not page.find("polyline")
    assert any("fixes its sequence length" in t for t in page.texts)
    assert any(t.startswith("At the model's fixed size: GFLOPs") for t in page.texts)
    assert len(page.with_class("g", "gnode", "attention")) == e.n_attention_layers
