"""Decode attention on the GPU: tcomp's split-KV kernel (``tcomp.cached_attention`` on the Triton
backend) against PyTorch SDPA, in the same run. One new token per sequence, H = 32 query heads over
Hk = 8 kv heads (GQA), D = 128, bf16, batch 1 and 8, caches of 1k .. 128k slots, all valid
(kv_len = M). Baselines:

* ``sdpa_prefix``: SDPA over the valid prefix (k/v sliced to kv_len, ``enable_gqa=True``), the
  fastest of its flash, efficient, cuDNN and math backends (each tried; one that refuses the
  shapes is left out and its error kept);
* ``sdpa_masked_cache``: SDPA over the whole cache with a bool mask of the valid slots (what a
  Hugging Face static cache runs), again the fastest backend that runs.

Every variant is timed as a CUDA-graph replay of back-to-back calls (launch gaps removed for all
alike), warmed first and timed twice; a row whose baseline moved by more than 10 % between the two
timings is refused (its ratio is not written). The ceiling is the copy bandwidth measured in the
same run: a 2 GiB device copy (``copy_peak``) and a copy of the bytes one call reads
(``copy_same_bytes``); each row states the K+V bytes read per call over the time, as GB/s and as a
fraction of both.

    python bench/decode_attention.py [--batches 1,8] [--lens 1024,...,131072] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quant_linear import time_graph as graph_ms  # noqa: E402
from results_io import write_results  # noqa: E402

LENS = "1024,2048,4096,8192,16384,32768,65536,131072"


def time_graph(fn, calls: int) -> float:
    """Median seconds of one call, replaying a CUDA graph of ``calls`` back-to-back calls
    (``quant_linear.time_graph``, 20 replays)."""
    return graph_ms(fn, iters=20 * calls, per_graph=calls) / 1e3


def reference(q, k, v, scale: float) -> torch.Tensor:
    """fp32 attention of q (B, H, 1, D) over the whole (all valid) cache, grouped per kv head
    (no repeated K/V: the 128k caches at batch 8 would not fit four times over)."""
    b, h, n, d = q.shape
    hk = k.shape[1]
    qg = q.float().reshape(b, hk, (h // hk) * n, d)
    p = torch.softmax(qg @ k.float().transpose(-1, -2) * scale, dim=-1)
    return (p @ v.float()).reshape(b, h, n, v.shape[-1])


def sdpa_variants(q, k, v, kv_len: int, whole_mask) -> dict[str, dict]:
    """``{family: {backend: fn}}`` for the two SDPA baselines, one entry per SDPA backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }
    kp, vp = k[:, :, :kv_len], v[:, :, :kv_len]
    scale = q.shape[-1] ** -0.5

    def prefix(backend):
        def run():
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(q, kp, vp, scale=scale, enable_gqa=True)

        return run

    def masked(backend):
        def run():
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(
                    q, k, v, attn_mask=whole_mask, scale=scale, enable_gqa=True
                )

        return run

    return {
        "sdpa_prefix": {name: prefix(b) for name, b in backends.items()},
        "sdpa_masked_cache": {name: masked(b) for name, b in backends.items()},
    }


def calls_for(nbytes: int) -> int:
    """Calls per graph: about 2 ms of work at ~3 TB/s, between 2 and 50."""
    return max(2, min(50, int(2e-3 * 3e12 / max(nbytes, 1))))


def copy_seconds(nbytes: int, calls: int) -> float:
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    return time_graph(lambda: dst.copy_(src), calls)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--lens", default=LENS)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--out", default=None)
    ap.add_argument("--math-limit-gb", type=float, default=16.0,
                    help="skip SDPA's math backend where its repeated K/V would exceed this")  # fmt: skip
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    if not torch.cuda.is_available():
        sys.exit("bench/decode_attention.py needs CUDA")
    import triton

    from tcomp.backends.triton import autotune
    from tcomp.backends.triton import decode_attention as dec
    from tcomp.verify import rel_error

    name = torch.cuda.get_device_name()
    target = "h200" if "H200" in name else "h100"
    h, hk, d, dt = args.heads, args.kv_heads, args.dim, torch.bfloat16
    peak_copy_s = copy_seconds(2 << 30, 5)
    peak_copy_bw = 2 * (2 << 30) / peak_copy_s  # read + write
    print(f"{name}: copy bandwidth {peak_copy_bw / 1e9:.0f} GB/s (2 GiB device copy)", flush=True)
    rows = []
    for b in (int(x) for x in args.batches.split(",")):
        for m in (int(x) for x in args.lens.split(",")):
            gen = torch.Generator(device="cuda").manual_seed(m + b)
            q = torch.randn(b, h, 1, d, device="cuda", dtype=dt, generator=gen)
            k = torch.randn(b, hk, m, d, device="cuda", dtype=dt, generator=gen)
            v = torch.randn(b, hk, m, d, device="cuda", dtype=dt, generator=gen)
            kv_len = torch.full((1,), m, dtype=torch.int64, device="cuda")
            whole_mask = (torch.arange(m, device="cuda") < kv_len)[None, None, None, :].expand(b, 1, 1, m)
            nbytes = k.numel() * k.element_size() + v.numel() * v.element_size()
            calls = calls_for(nbytes)
            scale = d**-0.5
            ours = lambda: dec.cached_attention(q, k, v, None, None, scale, kv_len, target=target)  # noqa: E731
            with torch.no_grad():
                ref = reference(q, k, v, scale)
                got = ours()  # the first call autotunes (outside any graph)
                errors = {"tcomp": rel_error(got, ref)}
                failed: dict[str, str] = {}
                families = sdpa_variants(q, k, v, m, whole_mask)
                first: dict[str, float] = {"tcomp": time_graph(ours, calls)}
                fns = {"tcomp": ours}
                for fam, variants in families.items():
                    for backend, fn in variants.items():
                        key = f"{fam}/{backend}"
                        if backend == "math" and nbytes * h // hk > args.math_limit_gb * 1e9:
                            failed[key] = "skipped: repeated K/V over --math-limit-gb"
                            continue
                        try:
                            out = fn()
                            torch.cuda.synchronize()
                            errors[key] = rel_error(out, ref)
                            first[key] = time_graph(fn, calls)
                            fns[key] = fn
                        except Exception as exc:  # noqa: BLE001 - a backend that refuses the shapes
                            failed[key] = (
                                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
                            )
                            torch.cuda.synchronize()
                            torch.cuda.empty_cache()
                copy_s = copy_seconds(nbytes, calls)
                second = {key: time_graph(fn, calls) for key, fn in fns.items()}
            t = {key: min(first[key], second[key]) for key in fns}
            row = {
                "batch": b, "heads": h, "kv_heads": hk, "dim": d, "cache_len": m, "kv_len": m,
                "dtype": "bf16", "kv_bytes_per_call": nbytes, "calls_per_graph": calls,
                "us": {key: val * 1e6 for key, val in t.items()},
                "us_first": {key: val * 1e6 for key, val in first.items()},
                "us_second": {key: val * 1e6 for key, val in second.items()},
                "rel_error_vs_fp32_reference": errors, "failed": failed,
                "copy_same_bytes_GBps": 2 * nbytes / copy_s / 1e9,
                "tcomp_GBps": nbytes / t["tcomp"] / 1e9,
            }  # fmt: skip
            row["tcomp_fraction_of_copy_peak"] = row["tcomp_GBps"] * 1e9 / peak_copy_bw
            row["tcomp_fraction_of_copy_same_bytes"] = row["tcomp_GBps"] / row["copy_same_bytes_GBps"]
            line = (
                f"B={b} M={m:6d}: tcomp {t['tcomp'] * 1e6:8.1f} us {row['tcomp_GBps']:6.0f} GB/s "
                f"({row['tcomp_fraction_of_copy_peak']:.0%} of copy)"
            )
            for fam in families:
                cands = {key: t[key] for key in t if key.startswith(fam + "/")}
                if not cands:
                    row[fam] = {"baseline": None, "speedup": None, "refused": True, "why": "no backend ran"}
                    line += f"  {fam}: none ran"
                    continue
                best = min(cands, key=cands.get)
                moved = abs(second[best] - first[best]) / first[best]
                refused = moved > 0.10
                speedup = None if refused else t[best] / t["tcomp"]
                row[fam] = {"baseline": best, "us": t[best] * 1e6, "moved": moved, "refused": refused,
                            "speedup": speedup}  # fmt: skip
                line += f"  {best} {t[best] * 1e6:8.1f} us " + (
                    f"x{speedup:.2f}" if speedup is not None else f"REFUSED (baseline moved {moved:.0%})"
                )
            print(line, flush=True)
            rows.append(row)
            del whole_mask, families, fns, ours
            torch.cuda.empty_cache()
    tuned = {
        key: entry for key, entry in _autotune_entries(autotune).items() if key.startswith("decode_attn|")
    }
    out = (
        args.out
        or Path(__file__).parent / "results" / f"decode-attention-{name.lower().replace(' ', '-')}.json"
    )
    write_results(
        out, "decode_attention", rows, target=target, copy_peak_GBps=peak_copy_bw / 1e9,
        triton_version=triton.__version__, autotune=tuned,
    )  # fmt: skip


def _autotune_entries(autotune) -> dict:
    try:
        return json.loads(autotune.cache_path().read_text())
    except (OSError, ValueError):
        return {}


if __name__ == "__main__":
    main()
