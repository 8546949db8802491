"""The fused GEMM: ``act(x @ w.T + bias) + residual`` in one generated kernel, the lowering that
finds linear+epilogue chains, and the autotuner's choice and cache."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("triton")

import tcomp  # noqa: E402
from tcomp.backends.triton import TRITON, autotune, gemm  # noqa: E402
from tcomp.verify import eps  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(out).all()
    diff = (out.double() - ref).norm().item()
    return diff / ref.norm().item() if ref.norm() > 0 else diff  # all-zero result (ReLU): absolute


@given(
    m=st.integers(1, 150), n=st.integers(1, 96), k=st.integers(1, 130),
    act=st.sampled_from(["none", "gelu", "silu", "relu"]), bias=st.booleans(), residual=st.booleans(),
    dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16),
)  # fmt: skip
def test_generated_gemm_matches_float64(m, n, k, act, bias, residual, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g) / k**0.5
    b = torch.randn(n, generator=g) if bias else None
    r = torch.randn(m, n, generator=g) if residual else None
    ref = gemm.reference(*(t.double() if t is not None else None for t in (x, w, b, r)), act)

    def cast(t):
        return t.to(DEVICE, dtype) if t is not None else None

    cfg = gemm.GPU_CONFIGS[1] if DEVICE == "cuda" else None  # the kernel, not the autotuner's choice
    out = gemm.linear(cast(x), cast(w), cast(b), cast(r), act, target="h200", config=cfg)
    assert out.shape == (m, n) and out.dtype == dtype
    # inputs rounded to dtype, products summed in fp32: a few ulps of the dtype, relative to the output
    rounded = gemm.reference(*(cast(t).double().cpu() if t is not None else None for t in (x, w, b, r)), act)
    assert rel(out.cpu(), rounded) <= 8 * eps(dtype) + 1e-6, (m, n, k, act)
    assert rel(out.cpu(), ref) <= 64 * eps(dtype)


def test_batched_input_and_strided_weight():
    torch.manual_seed(0)
    x = torch.randn(3, 7, 40, device=DEVICE)
    w = torch.randn(40, 24, device=DEVICE).t()  # (24, 40) with strides (1, 24)
    b = torch.randn(24, device=DEVICE)
    out = gemm.linear(x, w, b, None, "gelu", target="h200")
    ref = F.gelu(F.linear(x.double(), w.double(), b.double()))
    assert out.shape == (3, 7, 24)
    assert rel(out, ref) < 1e-6


class MLP(torch.nn.Module):
    """Pre-LN block: up(+GELU), down(+residual) feeding two users, and a post-LN residual."""

    def __init__(self, c: int = 32, act: str = "gelu"):
        super().__init__()
        self.ln = torch.nn.LayerNorm(c)
        self.up, self.down, self.out = (
            torch.nn.Linear(c, 4 * c),
            torch.nn.Linear(4 * c, c),
            torch.nn.Linear(c, c),
        )
        self.act = {
            "gelu": F.gelu,
            "silu": F.silu,
            "relu": F.relu,
            "tanh": lambda t: F.gelu(t, approximate="tanh"),
        }[act]
        self.ln2 = torch.nn.LayerNorm(c)

    def forward(self, x):
        h = self.down(self.act(self.up(self.ln(x)))) + x  # residual with two users below
        return self.ln2(self.out(h) + h), h * 2


def _gemm_nodes(gm):
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target is gemm.linear]


@pytest.mark.parametrize("act", ["gelu", "silu", "relu"])
def test_lowering_fuses_activation_and_residual(act):
    torch.manual_seed(1)
    model = MLP(act=act).eval().to(DEVICE)
    x = torch.randn(2, 9, 32, device=DEVICE)
    fast = tcomp.optimize(model, (x,), target="h200")
    rec = fast.report["fuse.triton.gemm_epilogue"]
    assert rec.status == "applied" and rec.error <= rec.tolerance, (rec.reason, rec.notes)
    epilogues = sorted((n.args[4], n.args[3] is not None) for n in _gemm_nodes(fast.graph_module))
    # up: activation; down: residual (its add has two users); out: its add feeds a LayerNorm -> left
    # to the add+LayerNorm fusion
    assert epilogues == sorted([(act, False), ("none", True)])
    y = torch.randn(3, 11, 32, device=DEVICE)
    with torch.no_grad():
        for a, b in zip(fast(y), model(y)):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def test_tanh_gelu_is_not_taken_as_exact_gelu():
    model = MLP(act="tanh").eval().to(DEVICE)
    fast = tcomp.optimize(model, (torch.randn(2, 5, 32, device=DEVICE),), target="h200")
    assert [n.args[4] for n in _gemm_nodes(fast.graph_module)] == ["none"]  # only the residual one


def test_kernel_sources_carry_the_gemm(tmp_path):

    fast = tcomp.optimize(MLP().eval().to(DEVICE), (torch.randn(2, 5, 32, device=DEVICE),), target="h200")
    names = set(TRITON.kernel_sources(fast.graph_module))
    assert {"tcomp_gemm_gelu_b_ieee.py", "tcomp_gemm_none_b_r_ieee.py"} <= names
    folder = tmp_path / "art"
    fast.save(str(folder))
    loaded = tcomp.load(str(folder), device=DEVICE)
    y = torch.randn(2, 6, 32, device=DEVICE)
    with torch.no_grad():
        for a, b in zip(loaded(y), fast(y)):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)


def test_autotune_times_once_and_caches_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("TCOMP_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(autotune, "enabled", lambda: True)
    monkeypatch.setattr(autotune, "_MEMO", {})
    monkeypatch.setattr(autotune, "device_key", lambda: "testdev")
    calls = []

    def fake_timings(cands, failed=None):
        calls.append(sorted(cands))
        return {name: 0.5 if name == "fast" else 2.0 for name in cands}

    monkeypatch.setattr(autotune, "timings", fake_timings)
    cands = {"slow": lambda: None, "fast": lambda: None}
    assert autotune.choose("k1", cands, default="slow") == "fast"
    assert autotune.choose("k1", cands, default="slow") == "fast"
    assert calls == [["fast", "slow"]]  # timed once in this process
    data = json.loads(autotune.cache_path().read_text())
    assert data["k1|testdev"] == {"best": "fast", "ms": {"slow": 2.0, "fast": 0.5}}
    monkeypatch.setattr(autotune, "_MEMO", {})  # a new process: read from disk, no timing
    assert autotune.choose("k1", cands, default="slow") == "fast"
    assert len(calls) == 1
    # a cached winner that is no longer a candidate is timed again
    assert autotune.choose("k1", {"slow": lambda: None, "other": lambda: None}, default="other") == "slow"
    assert len(calls) == 2


def test_autotune_off_without_gpu_uses_default():
    if torch.cuda.is_available():
        pytest.skip("checks the CPU/interpreter path")
    assert not autotune.enabled()
    assert autotune.choose("k", {"a": lambda: 1 / 0, "b": lambda: 1 / 0}, default="b") == "b"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU run: autotuned choice at a real size")
def test_autotuned_linear_gelu_bf16_large(monkeypatch):
    monkeypatch.setenv("TCOMP_AUTOTUNE", "1")
    torch.manual_seed(0)
    x = torch.randn(4096, 768, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(3072, 768, device="cuda", dtype=torch.bfloat16) / 768**0.5
    b = torch.randn(3072, device="cuda", dtype=torch.bfloat16)
    out = gemm.linear(x, w, b, None, "gelu", target="h200")
    ref = gemm.reference(x.double(), w.double(), b.double(), None, "gelu")
    assert rel(out, ref) < 16 * eps(torch.bfloat16)


@given(
    m=st.integers(1, 140), n=st.sampled_from([8, 24, 72]), k=st.sampled_from([8, 40, 64]),
    act=st.sampled_from(["none", "gelu"]), residual=st.booleans(), dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
)  # fmt: skip
def test_persistent_tensor_descriptor_variant(m, n, k, act, residual, dtype, seed):
    """The Hopper variant (persistent programs, TMA descriptors) computes the same thing; rows are
    multiples of 16 bytes as the launcher requires."""
    g = torch.Generator().manual_seed(seed)
    x, w, b = (
        torch.randn(m, k, generator=g),
        torch.randn(n, k, generator=g) / k**0.5,
        torch.randn(n, generator=g),
    )
    r = torch.randn(m, n, generator=g) if residual else None
    dev = [t.to(DEVICE, dtype) if t is not None else None for t in (x, w, b, r)]
    assert gemm.tma_ok(dev[0], dev[1], dev[3])
    cfg = gemm.GemmConfig(64, 64, 32, 8, 4, 1 if DEVICE == "cpu" else 3, tma=True)
    out = gemm.linear(*dev, act, target="h200", config=cfg)
    rounded = gemm.reference(*(t.double().cpu() if t is not None else None for t in dev), act)
    assert rel(out.cpu(), rounded) <= 8 * eps(dtype) + 1e-6
