"""Linear attention kernels on the GPU: tcomp's generated Triton kernels (non-causal two-phase and
causal chunked) against a hand-written PyTorch linear attention, flash-linear-attention's
``chunk_linear_attn`` when importable (causal: fla has no non-causal kernel), and SDPA (softmax, for the crossover sequence length).

Shapes: B*N = 65536 tokens, H = 16, D = F = 64, bf16 (features elu(x)+1 precomputed). Also
reports the bandwidth floor (read q, k, v + write out once at the device's peak bandwidth).
Writes bench/results/linear-attention-<device>.json.

    python bench/linear_attention.py [--runs 50] [--peak-gbs 4800] [--tokens 65536]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import write_results  # noqa: E402


def torch_linear(q, k, v, causal: bool, chunk: int = 64):
    """Hand-written PyTorch normalised linear attention (fp32 state, chunked when causal)."""
    qf, kf, vf = q.float(), k.float(), v.float()
    if not causal:
        kv = torch.einsum("bhnf,bhnd->bhfd", kf, vf)
        z = kf.sum(2)
        num = torch.einsum("bhnf,bhfd->bhnd", qf, kv)
        den = torch.einsum("bhnf,bhf->bhn", qf, z)[..., None]
        return (num / den.clamp_min(1e-20)).to(q.dtype)
    b, h, n, f = q.shape
    c = chunk
    qc, kc, vc = (t.reshape(b, h, n // c, c, t.shape[-1]) for t in (qf, kf, vf))
    kv_chunk = torch.einsum("bhcnf,bhcnd->bhcfd", kc, vc)
    kv_prefix = torch.cumsum(kv_chunk, 2) - kv_chunk  # state before each chunk
    z_prefix = torch.cumsum(kc.sum(3), 2) - kc.sum(3)
    s = torch.einsum("bhcif,bhcjf->bhcij", qc, kc).tril()
    num = torch.einsum("bhcij,bhcjd->bhcid", s, vc) + torch.einsum("bhcif,bhcfd->bhcid", qc, kv_prefix)
    den = s.sum(-1) + torch.einsum("bhcif,bhcf->bhci", qc, z_prefix)
    return (num / den[..., None].clamp_min(1e-20)).reshape(b, h, n, -1).to(q.dtype)


def time_ms(fn, runs: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def fla_fn():
    try:
        from fla.ops.linear_attn import chunk_linear_attn
    except Exception as exc:  # noqa: BLE001 - optional comparison
        return None, f"flash-linear-attention not importable: {type(exc).__name__}: {exc}"
    return chunk_linear_attn, ""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--peak-gbs", type=float, default=4800.0, help="device memory bandwidth (H200: 4800)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--target", default="h200", help="tcomp target the kernels are tiled for")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    import torch.nn.functional as F

    from tcomp.backends.triton.linear_attention import linear_attention

    fla, fla_note = fla_fn()
    h, d, dtype = 16, 64, torch.bfloat16
    rows = []
    for n in (1024, 4096, 16384, 65536):
        b = max(1, a.tokens // n)
        g = torch.Generator(device="cuda").manual_seed(0)
        q = F.elu(torch.randn(b, h, n, d, device="cuda", dtype=dtype, generator=g)) + 1
        k = F.elu(torch.randn(b, h, n, d, device="cuda", dtype=dtype, generator=g)) + 1
        v = torch.randn(b, h, n, d, device="cuda", dtype=dtype, generator=g)
        floor_ms = 4 * q.numel() * q.element_size() / (a.peak_gbs * 1e9) * 1e3
        for causal in (False, True):
            row = {"B": b, "N": n, "H": h, "D": d, "dtype": "bf16", "causal": causal, "floor_ms": floor_ms}
            ours = linear_attention(q, k, v, None, causal, target=a.target)
            ref = torch_linear(q, k, v, causal)
            row["max_rel_diff_vs_torch"] = float((ours.float() - ref.float()).norm() / ref.float().norm())
            row["tcomp_ms"] = time_ms(
                lambda: linear_attention(q, k, v, None, causal, target=a.target), a.runs
            )
            row["torch_ms"] = time_ms(lambda: torch_linear(q, k, v, causal), a.runs)
            row["sdpa_ms"] = time_ms(
                lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal), a.runs
            )
            if fla is not None and causal:
                qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k, v))  # fla: (B, T, H, D)
                try:
                    fo = fla(qt, kt, vt, scale=1.0, normalize=True)[0].transpose(1, 2)
                    row["fla_rel_diff_vs_torch"] = float(
                        (fo.float() - ref.float()).norm() / ref.float().norm()
                    )
                    row["fla_ms"] = time_ms(lambda: fla(qt, kt, vt, scale=1.0, normalize=True), a.runs)
                    row["tcomp_vs_fla"] = row["fla_ms"] / row["tcomp_ms"]
                except Exception as exc:  # noqa: BLE001
                    row["fla_error"] = f"{type(exc).__name__}: {exc}"
            row["speedup_vs_torch"] = row["torch_ms"] / row["tcomp_ms"]
            row["x_floor"] = row["tcomp_ms"] / floor_ms
            print(row)
            rows.append(row)
    crossover = {}
    for causal in (False, True):
        faster = [r["N"] for r in rows if r["causal"] is causal and r["tcomp_ms"] < r["sdpa_ms"]]
        crossover["causal" if causal else "non_causal"] = min(faster) if faster else None
    dev = torch.cuda.get_device_name().split()[-1].lower()
    out = a.out or str(Path(__file__).resolve().parent / "results" / f"linear-attention-{dev}.json")
    fla_version = ""
    if fla is not None:
        import importlib.metadata as md

        fla_version = md.version("fla-core")
    write_results(
        out, "linear_attention", rows, fla=fla_note or f"chunk_linear_attn (fla-core {fla_version})",
        crossover_n_vs_sdpa=crossover,
    )  # fmt: skip


if __name__ == "__main__":
    main()
