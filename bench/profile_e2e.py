"""Where the time goes: one BERT-base (bf16, batch 32, seq 512) or ViT-B/16 (batch 256) forward under the profiler, for
eager, tcomp (Triton backend, CUDA graphs off so each kernel shows) and Inductor, with the host time
to issue one forward; and the GEMM shapes of BERT through cuBLAS with and without a fused bias+GELU
epilogue.

    python bench/profile_e2e.py [--model bert|vit] [--batch B] [--seq N]
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
import torch.nn.functional as F
from e2e import build, timed
from torch.profiler import ProfilerActivity, profile


def cpu_time(fn, iters: int = 10) -> float:
    """Host time to issue one forward (GPU work not waited for, queue kept short)."""
    total = 0.0
    for _ in range(iters):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        total += time.perf_counter() - t
    torch.cuda.synchronize()
    return total / iters


def top(fn, label: str, rows: int = 12) -> None:
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    print(f"\n== {label}")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=60))


def gemms(m: int) -> None:
    print("\n== cuBLAS GEMMs of BERT-base (bf16), ms")
    for k, n in ((768, 2304), (768, 768), (768, 3072), (3072, 768)):
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
        b = torch.randn(n, device="cuda", dtype=torch.bfloat16)
        lin = timed(lambda: F.linear(x, w, b)) * 1e3
        sep = timed(lambda: F.gelu(F.linear(x, w, b))) * 1e3
        epi = timed(lambda: torch._addmm_activation(b, x, w.t(), use_gelu=True)) * 1e3
        tf = 2 * m * k * n / (lin * 1e-3) / 1e12
        print(
            f"M={m} K={k} N={n}: linear {lin:.3f} ({tf:.0f} TFLOP/s)  linear+gelu {sep:.3f}  addmm_gelu {epi:.3f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="bert", choices=["bert", "vit"])
    ap.add_argument("--batch", type=int, default=None, help="default: the e2e benchmark's")
    ap.add_argument("--seq", type=int, default=512, help="BERT only")
    args = ap.parse_args()
    logging.disable(logging.WARNING)

    import tcomp

    model, full, small, batch = build(args.model)
    model = model.eval().cuda().to(torch.bfloat16)
    batch = args.batch or batch
    full = {k: (v[:batch, : args.seq] if args.model == "bert" else v[:batch]).cuda() for k, v in full.items()}
    small = {k: v.cuda() for k, v in small.items()}
    with torch.no_grad():
        fast = tcomp.optimize(model, small, target="h200", cudagraphs=False)
        compiled = torch.compile(model)
        compiled(**full)
        runs = {
            "eager": lambda: model(**full),
            "tcomp": lambda: fast(**full),
            "inductor": lambda: compiled(**full),
        }
        for name, fn in runs.items():
            print(f"{name}: {timed(fn) * 1e3:.2f} ms/forward, host issue {cpu_time(fn) * 1e3:.2f} ms")
        for name, fn in runs.items():
            top(fn, name)
        if args.model == "bert":
            gemms(batch * args.seq)


if __name__ == "__main__":
    main()
