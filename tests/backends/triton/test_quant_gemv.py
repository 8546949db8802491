"""The generated low-bit GEMV (int8, int4, fp8 e4m3, 1-bit weights; a few activation rows) in the Triton
interpreter on CPU: every launch the autotuner may pick against the float64 linear of the
dequantized weight, NaN propagation, the fall-back to the GEMM, and the kernels a lowered model
ships."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("triton")

import tcomp  # noqa: E402
from tcomp import quant as Q  # noqa: E402
from tcomp.backends.triton import TRITON, quant_gemm, quant_gemv, quant_w1  # noqa: E402
from tcomp.backends.triton.configs import QConfig  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the interpreter (conftest)


def _weights(fmt: str, w: torch.Tensor, group: int):
    """(launcher(x, bias, config), float64 dequantized weight) of ``w`` in ``fmt``."""
    k = w.shape[1]
    if fmt == "int8":
        q, s = Q.quantize_int8(w.float())
        q, s = q.to(DEVICE), s.to(DEVICE)
        return (
            lambda x, b, c: quant_gemm.linear_int8w(x, q, s, b, target="h200", config=c)
        ), Q.dequantize_int8(q.cpu(), s.cpu())
    if fmt == "fp8":
        q, s = Q.quantize_fp8(w.float(), "row")
        qd, sd = q.to(DEVICE), s.to(DEVICE)
        return (
            lambda x, b, c: quant_gemm.linear_fp8w(x, qd, sd, b, target="h200", config=c)
        ), Q.dequantize_fp8(q, s)
    if fmt == "int4":
        p, s, z = Q.quantize_int4(w.float(), group)
        dev = [t.to(DEVICE) for t in (p, s, z)]
        return (
            lambda x, b, c: quant_gemm.linear_int4w(x, *dev, group, b, target="h200", config=c)
        ), Q.dequantize_int4(p, s, z, group)
    p, alpha = Q.binarize(w.float())
    pd, ad = p.to(DEVICE), alpha.to(DEVICE)
    return (lambda x, b, c: quant_w1.linear_w1(x, pd, ad, k, b, target="h200", config=c)), Q.dequantize_bits(
        p, alpha, k
    )


@pytest.mark.parametrize("fmt,group", [("int8", 1), ("int4", 32), ("int4", 128), ("w1", 1), ("fp8", 1)])
@pytest.mark.parametrize("m", [1, 3])
def test_every_gemv_candidate_matches_dequantized_linear(fmt, group, m):
    g = torch.Generator().manual_seed(7 * m + group)
    n, k = 72, 384  # N not a multiple of any tile (wrapped rows masked); K a tail for 256-wide tiles
    w = torch.randn(n, k, generator=g, dtype=torch.float64) * torch.rand(
        n, 1, generator=g, dtype=torch.float64
    )
    x = torch.randn(m, k, generator=g, dtype=torch.float64)
    bias = torch.randn(n, generator=g, dtype=torch.float64)
    fn, w_hat = _weights(fmt, w, group)
    ref = torch.nn.functional.linear(x.float().double(), w_hat.double(), bias.float().double())
    cands = quant_gemv.candidates(fmt, m, n, k, group)
    assert all(c.block_m == 1 for c in cands) and any(c.split_k > 1 for c in cands)
    for cfg in cands:
        out = fn(x.to(DEVICE, torch.float32), bias.to(DEVICE, torch.float32), cfg).cpu()
        assert out.shape == (m, n) and torch.isfinite(out).all()
        rel = ((out.double() - ref).norm() / ref.norm()).item()
        assert rel <= 1e-5, (fmt, cfg.name, rel)  # exact decoded codes, fp32 products and sums


@pytest.mark.parametrize("fmt,group", [("int8", 1), ("int4", 64), ("w1", 1), ("fp8", 1)])
def test_gemv_is_the_small_batch_default_and_fp16_rounds_like_the_reference(fmt, group, monkeypatch):
    g = torch.Generator().manual_seed(11)
    n, k = 40, 256
    w = torch.randn(n, k, generator=g, dtype=torch.float64)
    x = torch.randn(2, 3, k, generator=g, dtype=torch.float64).half()  # 6 rows: the GEMM
    fn, w_hat = _weights(fmt, w, group)
    monkeypatch.setenv("TCOMP_AUTOTUNE", "0")  # the untuned default (on a GPU the autotuner may pick either)
    launched = []
    real = quant_gemv.launch
    monkeypatch.setattr(quant_gemv, "launch", lambda *a, **kw: launched.append(a[0]) or real(*a, **kw))
    for rows, gemv in ((x[:1, :2], True), (x, False)):  # 2 rows: GEMV; 6 rows: GEMM; both as the reference
        launched.clear()
        out = fn(rows.to(DEVICE), None, None).cpu()
        assert launched == ([fmt] if gemv else []), (rows.shape, launched)
        ref = torch.nn.functional.linear(rows.double(), w_hat.double())
        assert out.dtype == torch.float16 and out.shape == (*rows.shape[:-1], n)
        assert ((out.double() - ref).norm() / ref.norm()).item() <= 2e-3


@pytest.mark.parametrize("fmt,group", [("int8", 1), ("int4", 32), ("w1", 1), ("fp8", 1)])
def test_nan_in_an_activation_poisons_its_row_only(fmt, group):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(24, 128, generator=g, dtype=torch.float64)
    x = torch.randn(2, 128, generator=g)
    x[1, 77] = float("nan")
    fn, _ = _weights(fmt, w, group)
    out = fn(x.to(DEVICE), None, QConfig(1, 16, 64, 2, 4, 1)).cpu()
    assert torch.isfinite(out[0]).all() and torch.isnan(out[1]).all()


def test_gemv_config_refuses_what_it_cannot_run_and_misaligned_weights_take_the_gemm():
    g = torch.Generator().manual_seed(5)
    w = torch.randn(16, 64, generator=g)
    q, s = Q.quantize_int8(w)
    x = torch.randn(6, 64, generator=g)  # more rows than the GEMV takes
    with pytest.raises(ValueError, match="GEMV config"):
        quant_gemm.linear_int8w(
            x.to(DEVICE), q.to(DEVICE), s.to(DEVICE), target="h200", config=QConfig(1, 16, 64)
        )
    # a weight whose rows are not 4-byte aligned (a column slice) cannot be read as words
    wide_q, wide_s = Q.quantize_int8(torch.randn(16, 66, generator=g))
    sliced = wide_q[:, 1:65]
    assert quant_gemv.words_of(sliced, "int8", 64) is None
    x1 = torch.randn(1, 64, generator=g)
    out = quant_gemm.linear_int8w(x1.to(DEVICE), sliced.to(DEVICE), wide_s.to(DEVICE), target="h200").cpu()
    ref = torch.nn.functional.linear(x1.double(), Q.dequantize_int8(sliced, wide_s))
    assert ((out.double() - ref).norm() / ref.norm()).item() <= 1e-5


@pytest.mark.parametrize(
    "spec,kernel",
    [(("quantize.int4_weight", {"group": 32}), "tcomp_gemv_int4"), (("binarize", {}), "tcomp_gemv_w1"),
     (("quantize.fp8_weight", {}), "tcomp_gemv_fp8")],
)  # fmt: skip
def test_decode_sized_lowering_ships_the_gemv_kernel(spec, kernel):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 64)).eval().to(DEVICE)
    x = torch.randn(1, 1, 64, device=DEVICE)
    spec = (spec[0], {**spec[1], "skip_first_last": False})
    om = tcomp.optimize(model, (x,), passes=[spec], backend="triton")
    assert om.report["lower.triton"].status == "applied", om.report["lower.triton"].reason
    assert any(name.startswith(kernel) for name in TRITON.kernel_sources(om.graph_module))
    eager = tcomp.optimize(model, (x,), passes=[spec], backend="eager", verify=False)
    with torch.no_grad():
        got, want = om(x), eager(x)
    assert ((got - want).norm() / want.norm()).item() <= 1e-5


@pytest.mark.parametrize("m", [1, 4, 24])  # the GEMV (1, 4 rows) and the tensor-core GEMM (24 rows)
def test_fp8_decode_is_exact_for_every_e4m3_code(m):
    """Every finite e4m3 byte -- both signs, normals and subnormals, the largest 448 -- decoded by
    the kernels' integer bit moves is the value torch's float8_e4m3fn gives: one-hot activation
    rows read single weights back (times the scale), bit for bit in fp32."""
    codes = torch.tensor([c for c in range(256) if c not in (0x7F, 0xFF)], dtype=torch.uint8)  # no NaN
    k = 256
    q = torch.zeros(codes.numel(), k, dtype=torch.uint8)
    cols = torch.arange(codes.numel()) % k
    q[torch.arange(codes.numel()), cols] = codes
    qweight = q.view(torch.float8_e4m3fn)
    scale = torch.rand(codes.numel(), generator=torch.Generator().manual_seed(m), dtype=torch.float32) + 0.5
    want_w = qweight.to(torch.float64) * scale.to(torch.float64)[:, None]
    for first in range(0, k, m):
        x = torch.zeros(m, k)
        rows = torch.arange(first, min(first + m, k))
        x[torch.arange(rows.numel()), rows] = 1.0
        out = quant_gemm.linear_fp8w(x.to(DEVICE), qweight.to(DEVICE), scale.to(DEVICE), target="h200").cpu()
        want = x.double() @ want_w.T
        assert torch.equal(out, want.float()), (m, first, (out.double() - want).abs().max())
