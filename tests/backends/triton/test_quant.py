"""The generated weight-only int8/int4/fp8 GEMM (Triton interpreter on CPU, fp32/fp16 activations)
against the float64 reference of the dequantized linear, and lowering of the quantized dialect ops."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

pytest.importorskip("triton")

import tcomp  # noqa: E402
from tcomp import quant as Q  # noqa: E402
from tcomp.backends.triton import TRITON, quant_gemm  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the interpreter (conftest)


def _case(draw_seed, m, n, k, dtype, fmt, group, with_bias):
    g = torch.Generator().manual_seed(draw_seed)
    w = torch.randn(n, k, generator=g, dtype=torch.float64)
    x = torch.randn(m, k, generator=g, dtype=torch.float64)
    bias = torch.randn(n, generator=g, dtype=torch.float64) if with_bias else None
    if fmt == "int8":
        q, s = Q.quantize_int8(w.float())
        w_hat = Q.dequantize_int8(q, s)
        out = quant_gemm.linear_int8w(
            x.to(DEVICE, dtype),
            q.to(DEVICE),
            s.to(DEVICE),
            None if bias is None else bias.to(DEVICE, dtype),
            target="h200",
        ).cpu()
    elif fmt == "fp8":
        q, s = Q.quantize_fp8(w.float(), "row")
        w_hat = Q.dequantize_fp8(q, s)
        out = quant_gemm.linear_fp8w(
            x.to(DEVICE, dtype), q.to(DEVICE), s.to(DEVICE), None if bias is None else bias.to(DEVICE, dtype),
            target="h200",
        ).cpu()
    else:
        p, s, z = Q.quantize_int4(w.float(), group)
        w_hat = Q.dequantize_int4(p, s, z, group)
        dev = [t.to(DEVICE) for t in (p, s, z)]
        out = quant_gemm.linear_int4w(
            x.to(DEVICE, dtype), *dev, group, None if bias is None else bias.to(DEVICE, dtype), target="h200"
        ).cpu()
    ref = torch.nn.functional.linear(
        x.to(dtype).double(), w_hat, bias if bias is None else bias.to(dtype).double()
    )
    return out, ref


@given(
    seed=st.integers(0, 2**31 - 1),
    m=st.sampled_from([1, 3, 17]),
    n=st.sampled_from([16, 40, 64]),
    k=st.sampled_from([64, 128, 192]),
    dtype=st.sampled_from([torch.float32, torch.float16]),
    fmt=st.sampled_from(["int8", "int4", "fp8"]),
    group=st.sampled_from([32, 64]),
    with_bias=st.booleans(),
)
def test_kernel_matches_dequantized_linear(seed, m, n, k, dtype, fmt, group, with_bias):
    out, ref = _case(seed, m, n, k, dtype, fmt, group, with_bias)
    assert out.dtype == dtype and out.shape == ref.shape
    assert torch.isfinite(out).all()
    rel = ((out.double() - ref).norm() / ref.norm()).item()
    # fp32: exact products, fp32 sums; fp16: activations and dequantized weights rounded to fp16
    assert rel <= (1e-5 if dtype == torch.float32 else 2e-3), rel


@pytest.mark.parametrize(
    "spec", ["quantize.int8_weight", ("quantize.int4_weight", {"group": 32}), "quantize.fp8_weight"]
)
def test_triton_lowering_of_quantized_model(spec, tmp_path):
    torch.manual_seed(0)
    model = (
        nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32))
        .eval()
        .to(DEVICE)
    )
    x = torch.randn(2, 5, 64, device=DEVICE)
    name, opts = (spec, {}) if isinstance(spec, str) else spec
    # verified: after the approximate pass the lowering is checked against the previous stage
    om = tcomp.optimize(model, (x,), passes=[(name, {**opts, "skip_first_last": False})], backend="triton")
    lowering = om.report["lower.triton"]
    assert lowering.status == "applied" and lowering.rewrites >= 3, (lowering.reason, lowering.notes)
    targets = [n.target for n in om.graph_module.graph.nodes if n.op == "call_function"]
    launched = [t for t in targets if t in (quant_gemm.linear_int8w, quant_gemm.linear_int4w, quant_gemm.linear_fp8w)]
    assert len(launched) == 3
    src = TRITON.kernel_sources(om.graph_module)
    assert any(k.startswith(("tcomp_qgemm_int", "tcomp_qgemm_fp8")) for k in src)
    eager = tcomp.optimize(
        model, (x,), passes=[(name, {**opts, "skip_first_last": False})], backend="eager", verify=False
    )
    with torch.no_grad():
        a, b = om(x), eager(x)
    assert ((a - b).norm() / b.norm()).item() <= 1e-5


@pytest.mark.parametrize("fmt,group", [("int8", 1), ("int4", 128), ("int4", 32), ("fp8", 1)])
@pytest.mark.parametrize("m", [1, 20])
def test_every_autotune_candidate_matches_reference(fmt, group, m):
    """Each launch the GPU autotuner may pick (tiles, K splits) computes the same linear."""
    g = torch.Generator().manual_seed(1000 * m + group)
    n, k = 72, 512
    w = torch.randn(n, k, generator=g, dtype=torch.float64)
    x = torch.randn(m, k, generator=g, dtype=torch.float64)
    bias = torch.randn(n, generator=g, dtype=torch.float64)
    if fmt == "int8":
        q, s = Q.quantize_int8(w.float())
        w_hat, args = Q.dequantize_int8(q, s), (q, s)
        fn = quant_gemm.linear_int8w
    elif fmt == "fp8":
        q, s = Q.quantize_fp8(w.float(), "row")
        w_hat, args = Q.dequantize_fp8(q, s), (q, s)
        fn = quant_gemm.linear_fp8w
    else:
        p, s, z = Q.quantize_int4(w.float(), group)
        w_hat, args = Q.dequantize_int4(p, s, z, group), (p, s, z, group)
        fn = quant_gemm.linear_int4w
    ref = torch.nn.functional.linear(x, w_hat.double(), bias)
    default = quant_gemm.default_config(m, n, k)
    cands = quant_gemm.candidates(default, m)
    assert any(c.split_k > 1 for c in cands)
    ran = []
    for cfg in cands:
        dev_args = [a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in args]
        try:
            out = fn(x.to(DEVICE, torch.float32), *dev_args, bias=bias.to(DEVICE, torch.float32), target="h200", config=cfg)
        except Exception as exc:  # on a GPU a tile may not fit in shared memory: the autotuner skips it
            if type(exc).__name__ != "OutOfResources":
                raise
            continue
        rel = ((out.cpu().double() - ref).norm() / ref.norm()).item()
        assert rel <= 1e-5, (cfg.name, rel)
        ran.append(cfg)
    assert default in ran and any(c.split_k > 1 for c in ran)
