"""Kernelized attention with relative positions: ``tcomp.rpe_linear_attention`` (FFT, O(n log n))
against the quadratic kernelized-RPE reference (explicit Toeplitz weights, O(n^2)) and softmax
attention with the same bias materialised through SDPA (what a user would write), over n.
Reports the fitted exponent of time against n for the FFT op. Runs on CUDA when present (bf16
inputs, CUDA-event timing), else on the CPU (float32, small shapes). Writes
bench/results/rpe-scaling-<device>.json.

    python bench/rpe_scaling.py [--heads 16] [--dim 64] [--features 64] [--max-n 16384] [--runs 5]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

import tcomp.ops  # noqa: F401 - registers the dialect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import write_results  # noqa: E402

RPE = torch.ops.tcomp.rpe_linear_attention


def quadratic(q, k, v, coeffs):
    """O(n^2) kernelized attention with RPE: explicit (H, n, n) Toeplitz weights."""
    n = q.shape[2]
    idx = torch.arange(n, device=q.device)[None, :] - torch.arange(n, device=q.device)[:, None] + n - 1
    c = torch.exp(coeffs.float() - coeffs.float().amax(-1, keepdim=True))[:, idx]
    w = (q.float() @ k.float().transpose(-2, -1)) * c
    return ((w @ v.float()) / w.sum(-1, keepdim=True)).to(q.dtype)


def sdpa(q, k, v, bias):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def time_ms(fn, runs: int, cuda: bool) -> float:
    fn()
    times = []
    for _ in range(runs):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    cuda = torch.cuda.is_available()
    ap.add_argument("--heads", type=int, default=16 if cuda else 4)
    ap.add_argument("--dim", type=int, default=64 if cuda else 16)
    ap.add_argument("--features", type=int, default=64 if cuda else 16)
    ap.add_argument("--min-n", type=int, default=1024 if cuda else 256)
    ap.add_argument("--max-n", type=int, default=16384 if cuda else 4096)
    ap.add_argument("--quadratic-max-n", type=int, default=16384 if cuda else 4096)
    ap.add_argument("--runs", type=int, default=5 if cuda else 3)
    a = ap.parse_args()
    dev, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    rows, n = [], a.min_n
    while n <= a.max_n:
        g = torch.Generator(device=dev).manual_seed(n)
        q = torch.rand(1, a.heads, n, a.features, device=dev, generator=g).to(dtype) + 0.05
        k = torch.rand(1, a.heads, n, a.features, device=dev, generator=g).to(dtype) + 0.05
        v = torch.randn(1, a.heads, n, a.dim, device=dev, generator=g).to(dtype)
        slopes = 2.0 ** -torch.arange(1, a.heads + 1, device=dev, dtype=torch.float32)
        off = torch.arange(-(n - 1), n, device=dev, dtype=torch.float32)
        coeffs = -slopes[:, None] * off.abs()  # symmetric ALiBi
        row = {"n": n, "fft_ms": time_ms(lambda: RPE(q, k, v, coeffs, None, False), a.runs, cuda)}
        if n <= a.quadratic_max_n:
            row["quadratic_ms"] = time_ms(lambda: quadratic(q, k, v, coeffs), a.runs, cuda)
            idx = torch.arange(n, device=dev)[None, :] - torch.arange(n, device=dev)[:, None] + n - 1
            bias = coeffs[:, idx][None].to(dtype)
            qs, ks = torch.randn_like(v), torch.randn_like(v)
            row["sdpa_bias_ms"] = time_ms(lambda: sdpa(qs, ks, v, bias), a.runs, cuda)
            ref = quadratic(q.double(), k.double(), v.double(), coeffs.double())
            row["rel_err_vs_quadratic_f64"] = float(
                (RPE(q, k, v, coeffs, None, False).double() - ref).norm() / ref.norm()
            )
        rows.append(row)
        print(row, flush=True)
        n *= 2
    big = [r for r in rows if r["n"] >= rows[len(rows) // 2]["n"]]
    xs, ys = [math.log(r["n"]) for r in big], [math.log(r["fft_ms"]) for r in big]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(sum((x - mx) ** 2 for x in xs), 1e-12)
    print(f"fitted exponent of fft time vs n (n >= {big[0]['n']}): {slope:.2f}")
    name = torch.cuda.get_device_name().split()[-1].lower() if cuda else "cpu"
    write_results(
        Path(__file__).parent / "results" / f"rpe-scaling-{name}.json", "rpe_scaling", rows,
        fitted_exponent=slope, heads=a.heads, dim=a.dim, features=a.features, dtype=str(dtype),
    )  # fmt: skip


if __name__ == "__main__":
    main()
