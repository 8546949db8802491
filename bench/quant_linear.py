"""Weight-only int8 / int4 and fp8 e4m3 (per-row scales, the activation quantization included)
linear layers on the GPU against bf16 cuBLAS (``F.linear``), in the same run, plus
``torch._scaled_mm`` row-wise fp8 (GEMM only, activations quantized beforehand) where it runs:
batch 1 and 16, each timed plainly (CUDA events, median) and as a CUDA-graph replay (launch
gaps removed). Shapes (N x K of the weight): 28672x8192, 8192x28672, 4096x4096, 4096x11008,
11008x4096. Writes bench/results/quant-linear-<gpu>.json.

    python bench/quant_linear.py [--iters 200] [--groups 128] [--batches 1 16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import write_results  # noqa: E402

from tcomp import quant as Q  # noqa: E402
from tcomp.backends.triton import autotune, quant_fp8, quant_gemm, quant_w1, quant_w1a1  # noqa: E402

SHAPES = [(28672, 8192), (8192, 28672), (4096, 4096), (4096, 11008), (11008, 4096)]


def time_plain(fn, iters: int) -> float:
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def time_graph(fn, iters: int, per_graph: int = 20) -> float:
    """Median ms of one call, replaying a CUDA graph of ``per_graph`` back-to-back calls."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(per_graph):
            fn()
    for _ in range(3):
        g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(max(5, iters // per_graph)):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / per_graph)
    return statistics.median(times)


def torchao_candidates(w: torch.Tensor, group: int) -> tuple[dict, dict, str]:
    """torchao's int8 / int4 weight-only linears on the same weight (the alternative a user would
    pick): ``({name: fn(x)}, {name: error text for the ones that could not be built}, version)``.
    int8 runs under ``torch.compile`` (torchao's int8 weight-only path is a dequantize + matmul that
    only Inductor fuses); int4 is torch's tinygemm int4 kernel in eager mode. Absent wheel: nothing."""
    try:
        import importlib.metadata as md

        from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_
    except Exception as exc:  # noqa: BLE001 - optional comparison
        return {}, {"torchao": f"not importable: {type(exc).__name__}: {exc}"}, ""
    out, errors = {}, {}
    for name, config, compiled in (
        ("torchao_int8wo_compiled", lambda: Int8WeightOnlyConfig(), True),
        # tile_packed_to_4d: torch's own int4 kernel (_weight_int4pack_mm); torchao's default
        # packing needs the mslk package, which has no usable wheel
        (
            f"torchao_int4wo_g{group}",
            lambda: Int4WeightOnlyConfig(group_size=group, int4_packing_format="tile_packed_to_4d"),
            False,
        ),
    ):
        try:
            lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, device=w.device, dtype=w.dtype)
            with torch.no_grad():
                lin.weight.copy_(w)
            quantize_(lin, config())
            fn = torch.compile(lin, mode="max-autotune-no-cudagraphs") if compiled else lin
            out[name] = fn
        except Exception as exc:  # noqa: BLE001
            errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return out, errors, md.version("torchao")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--group", type=int, default=128)
    ap.add_argument("--target", default="h200", help="tcomp target the kernels are tiled for")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--suffix", default="", help="appended to the results file name")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/quant_linear.py needs a CUDA GPU")
    dev, dt = "cuda", torch.bfloat16
    torch.manual_seed(0)
    rows = []
    skipped: dict[str, str] = {}
    tao_version = ""
    for n, k in SHAPES:
        w = torch.randn(n, k, device=dev, dtype=dt) * 0.02
        q8, s8 = Q.quantize_int8(w)
        p4, s4, z4 = Q.quantize_int4(w, args.group)
        w8_ref = Q.dequantize_int8(q8, s8, torch.float32)
        w4_ref = Q.dequantize_int4(p4, s4, z4, args.group, torch.float32)
        f8, sf8 = Q.quantize_fp8(w, "row")
        pb, ab = Q.binarize(w)
        w1_ref = Q.dequantize_bits(pb, ab, k, torch.float32)
        tau, shift = torch.zeros(k, device=dev), torch.zeros(n, device=dev)
        fp8_cap = torch.cuda.get_device_capability() >= quant_fp8.MIN_CAPABILITY
        tao, tao_errors, tao_version = torchao_candidates(w, args.group)
        skipped.update({f"{n}x{k} {name}": why for name, why in tao_errors.items()})
        for m in args.batches:
            x = torch.randn(m, k, device=dev, dtype=dt)
            cands = {
                "bf16_cublas": lambda x=x, w=w: F.linear(x, w),
                "int8_weight": lambda x=x: quant_gemm.linear_int8w(x, q8, s8, target=args.target),
                f"int4_weight_g{args.group}": lambda x=x: quant_gemm.linear_int4w(
                    x, p4, s4, z4, args.group, target=args.target
                ),
            }
            for name, fn in tao.items():  # each checked against its own dequantized weight below
                cands[name] = lambda x=x, fn=fn: fn(x)
            cands["w1a16"] = lambda x=x: quant_w1.linear_w1(x, pb, ab, k, target=args.target)
            cands["w1a1"] = lambda x=x: quant_w1a1.linear_w1a1(x, pb, ab, tau, shift, k, target=args.target)
            # correctness in the same run: each kernel against the fp32 linear of its dequantized weight
            errs = {}
            for name, ref_w in (
                ("int8_weight", w8_ref),
                (f"int4_weight_g{args.group}", w4_ref),
                ("w1a16", w1_ref),
            ):
                ref = F.linear(x.float(), ref_w)
                errs[name] = ((cands[name]().float() - ref).norm() / ref.norm()).item()
            for name in list(tao):  # torchao: against the bf16 weight (its own rounding is part of it)
                ref = F.linear(x.float(), w.float())
                try:
                    errs[name] = ((cands[name]().float() - ref).norm() / ref.norm()).item()
                except Exception as exc:  # noqa: BLE001 - e.g. a kernel missing for this shape
                    skipped[f"{n}x{k} b={m} {name}"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                    del cands[name]
            ref = torch.ops.tcomp.linear_w1a1(x, pb, ab, tau, shift, k, None).float()  # W1A1: its dialect op
            errs["w1a1"] = ((cands["w1a1"]().float() - ref).norm() / ref.norm()).item()
            floor_ms = {
                "bf16_cublas": n * k * 2 / 4.2e9,
                "int8_weight": n * k / 4.2e9,
                f"int4_weight_g{args.group}": n * k / 2 / 4.2e9,
                "fp8_row": n * k / 4.2e9,
                "torch_scaled_mm_row": n * k / 4.2e9,
                "w1a16": n * k / 8 / 4.2e9,
                "torchao_int8wo_compiled": n * k / 4.2e9,
                f"torchao_int4wo_g{args.group}": n * k / 2 / 4.2e9,
                "w1a1": n * k / 8 / 4.2e9,
            }
            if fp8_cap:  # fp8: against the dialect's reference op (same e4m3 numbers, fp32 sums)
                ref = torch.ops.tcomp.fp8_linear(x, f8, sf8, "row", None).float()
                cands["fp8_row"] = lambda x=x: quant_fp8.linear_fp8(x, f8, sf8, "row", target=args.target)
                errs["fp8_row"] = ((cands["fp8_row"]().float() - ref).norm() / ref.norm()).item()
                xq, sx = Q.quantize_fp8(x, "row")
                mm = lambda xq=xq, sx=sx: torch._scaled_mm(  # noqa: E731
                    xq, f8.t(), scale_a=sx[:, None], scale_b=sf8[None, :], out_dtype=dt
                )
                try:
                    errs["torch_scaled_mm_row"] = ((mm().float() - ref).norm() / ref.norm()).item()
                    cands["torch_scaled_mm_row"] = mm
                except (RuntimeError, AttributeError) as exc:  # e.g. shape rules of the installed torch
                    print(f"torch._scaled_mm row-wise skipped at {n}x{k} b={m}: {exc}".splitlines()[0])
            tuned = {
                "int8_weight": quant_gemm.tune_key("int8", m, n, k, 1, dt, False, "h200"),
                f"int4_weight_g{args.group}": quant_gemm.tune_key(
                    "int4", m, n, k, args.group, dt, False, "h200"
                ),
            }
            for name, fn in cands.items():
                plain, graphed = time_plain(fn, args.iters), time_graph(fn, args.iters)
                rows.append(
                    {
                        "n": n, "k": k, "batch": m, "kernel": name, "plain_ms": plain, "graph_ms": graphed,
                        "bandwidth_floor_ms": floor_ms[name], "rel_error_vs_dequantized": errs.get(name),
                        "config": autotune.lookup(tuned[name]) if name in tuned else None,
                    }
                )  # fmt: skip
            base = {r["kernel"]: r for r in rows[-len(cands) :]}["bf16_cublas"]
            for r in rows[-len(cands) :]:
                r["speedup_plain"] = base["plain_ms"] / r["plain_ms"]
                r["speedup_graph"] = base["graph_ms"] / r["graph_ms"]
                print(
                    f"{n:6d}x{k:<6d} b={m:<3d} {r['kernel']:18s} plain {r['plain_ms']:.4f} ms "
                    f"graph {r['graph_ms']:.4f} ms (floor {r['bandwidth_floor_ms']:.4f}) "
                    f"x{r['speedup_plain']:.2f}/x{r['speedup_graph']:.2f} err={r['rel_error_vs_dequantized']} {r['config'] or ''}"
                )
        # written after every shape, so a run cut short keeps what it measured
        name = torch.cuda.get_device_name().lower().replace(" ", "-")
        out = Path(__file__).resolve().parent / "results" / f"quant-linear-{name}{args.suffix}.json"
        write_results(out, "quant_linear", rows, group=args.group, torchao=tao_version, not_run=skipped)


if __name__ == "__main__":
    main()
