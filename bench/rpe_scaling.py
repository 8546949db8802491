"""Kernelized attention with relative positions: ``tcomp.rpe_linear_attention`` (FFT, O(n log n))
against softmax attention with the same bias materialised through SDPA (``attn_mask``: what a user
would write) and the quadratic kernelized-RPE reference (explicit (H, n, n) Toeplitz weights, O(n^2)),
per sequence length and dtype. Prints the ratios and the fitted exponent of the FFT op's time
against n (over n >= 8k, or the upper half of the sizes), records the error of the op vs a float64
quadratic reference on a subset of query rows, and writes bench/results/rpe-scaling-<device>.json.
A size/dtype/method that runs out of memory is recorded as skipped with a note. Runs on torch 2.11+.

    python bench/rpe_scaling.py                     # CUDA: n = 4k, 8k, 16k; bf16 and fp32; H=8, D=F=64
    python bench/rpe_scaling.py --sizes 64,128      # anywhere (CPU: fp32), to check the script itself
    python bench/rpe_scaling.py --sizes 1024,4096,16384,65536,262144 --dtypes bf16 --out ...  # scaling
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

import tcomp.dialect  # noqa: F401 - registers the dialect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import write_results  # noqa: E402

RPE = torch.ops.tcomp.rpe_linear_attention
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
ERR_ROWS = 256  # query rows the float64 reference is evaluated on (spread over the sequence)


def toeplitz_index(n: int, device, rows: torch.Tensor | None = None) -> torch.Tensor:
    """(rows, n) indices ``(j - i) + n - 1`` into the (H, 2n-1) coefficients."""
    i = torch.arange(n, device=device) if rows is None else rows
    return torch.arange(n, device=device)[None, :] - i[:, None] + n - 1


def quadratic(q, k, v, coeffs, causal: bool, rows: torch.Tensor | None = None):
    """O(n^2) kernelized attention with RPE in the inputs' dtype: explicit Toeplitz weights
    ``exp(b - max b)[(j - i)]`` times ``q_i . k_j``, rows normalised (``rows``: only those queries)."""
    n = k.shape[2]
    b = coeffs.to(q.dtype)
    if causal:
        b = torch.cat([b[:, :n], torch.full_like(b[:, n:], float("-inf"))], dim=-1)
    c = torch.exp(b - b.amax(-1, keepdim=True))[:, toeplitz_index(n, q.device, rows)]
    qq = q if rows is None else q[:, :, rows]
    w = (qq @ k.transpose(-2, -1)) * c
    return (w @ v) / w.sum(-1, keepdim=True)


def sdpa(q, k, v, bias):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def is_oom(exc: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(exc, oom) or "out of memory" in str(exc) or "can't allocate memory" in str(exc)


def time_ms(fn, runs: int, cuda: bool) -> float:
    """Median wall time of ``fn`` over ``runs`` calls after two warm-up calls (CUDA-synchronised)."""
    for _ in range(2):
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


def attempt(row: dict, key: str, fn):
    """``row[key] = fn()``, or a note in ``row["skipped"]`` when it runs out of memory."""
    try:
        row[key] = fn()
    except (RuntimeError, MemoryError) as exc:
        if not is_oom(exc):
            raise
        row.setdefault("skipped", []).append(f"{key}: out of memory")
        print(f"  n={row['n']} {row['dtype']}: {key} skipped (out of memory)", flush=True)
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def problem(n: int, a, dev: str, dtype: torch.dtype):
    g = torch.Generator(device=dev).manual_seed(n)
    q = (torch.rand(a.batch, a.heads, n, a.features, device=dev, generator=g) + 0.05).to(dtype)
    k = (torch.rand(a.batch, a.heads, n, a.features, device=dev, generator=g) + 0.05).to(dtype)
    v = torch.randn(a.batch, a.heads, n, a.dim, device=dev, generator=g).to(dtype)
    slopes = 2.0 ** -torch.arange(1, a.heads + 1, device=dev, dtype=torch.float32)
    coeffs = -slopes[:, None] * torch.arange(-(n - 1), n, device=dev, dtype=torch.float32).abs()  # ALiBi
    return q, k, v, coeffs


def measure(n: int, name: str, a, dev: str) -> dict:
    dtype, cuda = DTYPES[name], dev == "cuda"
    row: dict = {"n": n, "dtype": name}
    q, k, v, coeffs = problem(n, a, dev, dtype)
    attempt(row, "fft_ms", lambda: time_ms(lambda: RPE(q, k, v, coeffs, None, a.causal), a.runs, cuda))
    if n <= a.compare_max_n:
        attempt(
            row, "quadratic_ms", lambda: time_ms(lambda: quadratic(q, k, v, coeffs, a.causal), a.runs, cuda)
        )

        def run_sdpa() -> float:
            b = coeffs.to(dtype)
            if a.causal:
                b = torch.cat([b[:, :n], torch.full_like(b[:, n:], float("-inf"))], dim=-1)
            bias = b[:, toeplitz_index(n, dev)][None]  # (1, H, n, n): the user's materialised bias
            g = torch.Generator(device=dev).manual_seed(n + 1)
            qs = torch.randn(a.batch, a.heads, n, a.dim, device=dev, generator=g).to(dtype)
            ks = torch.randn(a.batch, a.heads, n, a.dim, device=dev, generator=g).to(dtype)
            return time_ms(lambda: sdpa(qs, ks, v, bias), a.runs, cuda)

        attempt(row, "sdpa_bias_ms", run_sdpa)

    def error() -> float:
        rows = torch.linspace(0, n - 1, min(n, ERR_ROWS), device=dev).round().long().unique()
        d = (t.double() for t in (q, k, v, coeffs))
        ref = quadratic(*d, a.causal, rows=rows)
        got = RPE(q, k, v, coeffs, None, a.causal)[:, :, rows].double()
        return float((got - ref).norm() / ref.norm())

    attempt(row, "rel_err_vs_f64", error)
    for other in ("quadratic_ms", "sdpa_bias_ms"):
        if "fft_ms" in row and other in row:
            row[f"speedup_vs_{other[:-3]}"] = row[other] / row["fft_ms"]
    return row


def fitted_exponent(rows: list[dict], name: str) -> float | None:
    """Slope of log(fft time) against log(n) over n >= 8k (or the upper half of the sizes)."""
    pts = sorted((r["n"], r["fft_ms"]) for r in rows if r["dtype"] == name and "fft_ms" in r)
    big = [p for p in pts if p[0] >= 8192] or pts[len(pts) // 2 :]
    if len(big) < 2:
        return None
    xs, ys = [math.log(p[0]) for p in big], [math.log(p[1]) for p in big]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def main(argv: list[str] | None = None) -> Path:
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--sizes", default="4096,8192,16384" if cuda else "256,1024,4096", help="sequence lengths"
    )
    ap.add_argument("--dtypes", default="bf16,fp32" if cuda else "fp32", help=f"of {sorted(DTYPES)}")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=64, help="value head dim (and SDPA's head dim)")
    ap.add_argument("--features", type=int, default=64, help="feature dim m of phi(q), phi(k)")
    ap.add_argument("--compare-max-n", type=int, default=16384, help="largest n for quadratic and SDPA")
    ap.add_argument("--causal", action="store_true")
    ap.add_argument(
        "--chunk-bytes", type=int, default=None, help="FFT chunk budget (tcomp.dialect.rpe.RPE_CHUNK_BYTES)"
    )
    ap.add_argument("--runs", type=int, default=10 if cuda else 3)
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/rpe-scaling-<device>.json)")
    a = ap.parse_args(argv)
    dev = "cuda" if cuda else "cpu"
    tcomp.dialect.rpe.RPE_CHUNK_BYTES = a.chunk_bytes
    sizes = [int(s) for s in a.sizes.split(",") if s.strip()]
    names = [s.strip() for s in a.dtypes.split(",") if s.strip()]
    unknown = [s for s in names if s not in DTYPES]
    if unknown:
        ap.error(f"unknown dtypes {unknown}; choose from {sorted(DTYPES)}")
    rows = []
    for name in names:
        for n in sizes:
            row = measure(n, name, a, dev)
            rows.append(row)
            ratios = "  ".join(f"{k}={v:.1f}x" for k, v in row.items() if k.startswith("speedup"))
            times = "  ".join(f"{k}={v:.3f}" for k, v in row.items() if k.endswith("_ms"))
            print(
                f"{name} n={n}: {times}  {ratios}  err={row.get('rel_err_vs_f64', float('nan')):.2e}",
                flush=True,
            )
    exponents = {name: fitted_exponent(rows, name) for name in names}
    for name, e in exponents.items():
        print(f"fitted exponent of fft time vs n ({name}): {'-' if e is None else f'{e:.2f}'}")
    device = torch.cuda.get_device_name().split()[-1].lower() if cuda else "cpu"
    path = Path(a.out) if a.out else Path(__file__).parent / "results" / f"rpe-scaling-{device}.json"
    return write_results(
        path, "rpe_scaling", rows, fitted_exponent=exponents, batch=a.batch, heads=a.heads, dim=a.dim,
        features=a.features, causal=a.causal, runs=a.runs, chunk_bytes=a.chunk_bytes,
        allow_tf32=bool(cuda and torch.backends.cuda.matmul.allow_tf32),
    )  # fmt: skip


if __name__ == "__main__":
    main()
