"""RMSNorm on the GPU: tcomp's generated kernel (``tcomp.rms_norm`` on the Triton backend, which
canonicalize now produces for every RMSNorm spelling) against what a user gets otherwise, in the
same run: eager Hugging Face LlamaRMSNorm (the decomposed chain), ``aten.rms_norm``
(``F.rms_norm``), and ``torch.compile(mode="max-autotune-no-cudagraphs")`` of the HF module.

Every variant is timed as a CUDA-graph replay of ``--calls`` back-to-back calls (launch overhead
removed for all alike), warmed first and timed twice; a row whose baseline (the fastest
non-tcomp variant) moved by more than 10 % between the two timings is refused. The ceiling is the
device copy bandwidth measured in the same run (a ``copy_`` of the same bytes); each row states the
bytes moved per call (x read, weight read, output written) over the time, as a fraction of it.

    python bench/rms_norm.py [--dim 4096] [--rows 1,16,512,4096,16384] [--dtype bf16]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quant_linear import time_graph  # noqa: E402
from results_io import write_results  # noqa: E402


def graph_time(fn, calls: int) -> float:
    """Seconds per call of ``fn``, replayed from a CUDA graph of ``calls`` calls (quant_linear's timer)."""
    return time_graph(fn, iters=20 * calls, per_graph=calls) / 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--rows", default="1,16,512,4096,16384")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    if not torch.cuda.is_available():
        sys.exit("bench/rms_norm.py needs CUDA")
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from tcomp.backends.triton.rms_norm import rms_norm as kernel
    from tcomp.verify import rel_error

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    d, dev = args.dim, "cuda"
    hf = LlamaRMSNorm(d, eps=1e-6).to(dev, dtype)
    with torch.no_grad():
        hf.weight.copy_(torch.randn(d, device=dev, dtype=dtype))
    compiled = torch.compile(hf, mode="max-autotune-no-cudagraphs", dynamic=False)
    target = "h200" if "H200" in torch.cuda.get_device_name() else "h100"
    rows_out = []
    for r in [int(v) for v in args.rows.split(",")]:
        x = torch.randn(r, d, device=dev, dtype=dtype)
        out = torch.empty_like(x)
        w = hf.weight
        variants = {
            "eager_hf": lambda: hf(x),
            "aten_rms_norm": lambda: torch.nn.functional.rms_norm(x, (d,), w, 1e-6),
            "torch_compile_max_autotune": lambda: compiled(x),
            "tcomp_triton": lambda: kernel(x, w, 1e-6, target=target),
        }
        with torch.no_grad():
            ref = hf.double()(x.double())
            hf.to(dtype)
            errs = {k: rel_error(f().double(), ref) for k, f in variants.items()}
            copy_s = graph_time(lambda: out.copy_(x), args.calls)
            first = {k: graph_time(f, args.calls) for k, f in variants.items()}
            second = {k: graph_time(f, args.calls) for k, f in variants.items()}
        base_name = min((k for k in first if k != "tcomp_triton"), key=first.get)
        moved = abs(second[base_name] - first[base_name]) / first[base_name]
        t = {k: min(first[k], second[k]) for k in first}
        nbytes = 2 * x.numel() * x.element_size() + w.numel() * w.element_size()
        row = {
            "rows": r, "dim": d, "dtype": args.dtype, "bytes_per_call": nbytes,
            "copy_bandwidth_GBps": 2 * x.numel() * x.element_size() / copy_s / 1e9,
            "us": {k: v * 1e6 for k, v in t.items()}, "rel_error_vs_float64": errs,
            "baseline": base_name, "baseline_moved": moved, "refused": moved > 0.10,
            "speedup_vs_baseline": t[base_name] / t["tcomp_triton"],
            "speedup_vs_eager": t["eager_hf"] / t["tcomp_triton"],
            "tcomp_fraction_of_copy_bandwidth": nbytes / t["tcomp_triton"] / (2 * x.numel() * x.element_size() / copy_s),
        }  # fmt: skip
        rows_out.append(row)
        print(
            f"rows {r:6d}: tcomp {row['us']['tcomp_triton']:8.2f} us  {base_name} {row['us'][base_name]:8.2f} us  "
            f"x{row['speedup_vs_baseline']:.2f} vs best baseline, x{row['speedup_vs_eager']:.2f} vs eager, "
            f"{row['tcomp_fraction_of_copy_bandwidth']:.0%} of copy bw{'  REFUSED (baseline moved)' if row['refused'] else ''}"
        )
    name = torch.cuda.get_device_name().lower().replace(" ", "-")
    write_results(args.out or Path(__file__).parent / "results" / f"rms-norm-{name}.json", "rms_norm", rows_out)


if __name__ == "__main__":
    main()
