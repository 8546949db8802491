"""Pages of quantization (fidelity and kernel speed) and of the ONNX Runtime backend."""

from __future__ import annotations

import statistics

from .common import (
    GOALS,
    columns,
    mb,
    met,
    num,
    pct,
    span,
    table,
    times,
    when,
)


def _quant_speed(d: dict, batches: list[int]) -> tuple[list[str], list[list[str]]]:
    kernels = [
        ("bf16_cublas", "bf16 cuBLAS"),
        ("int8_weight", "int8 weight-only"),
        ("torchao_int8wo_compiled", "torchao int8 (compiled)"),
        (f"int4_weight_g{d['group']}", f"int4 g{d['group']}"),
        (f"torchao_int4wo_g{d['group']}", f"torchao int4 g{d['group']} (tinygemm)"),
        ("fp8_row", "fp8 e4m3 (row)"),
        ("torch_scaled_mm_row", "torch `_scaled_mm` fp8"),
        ("w1a16", "W1A16"),
        ("w1a1", "W1A1"),
    ]
    by = {(r["n"], r["k"], r["batch"], r["kernel"]): r for r in d["rows"]}
    shapes = list(dict.fromkeys((r["n"], r["k"]) for r in d["rows"]))
    out = []
    for n, k in shapes:
        for b in batches:
            if (n, k, b, "bf16_cublas") not in by:
                continue
            cells = []
            for key, _ in kernels:
                r = by.get((n, k, b, key))
                if r is None:
                    cells.append("–")
                elif key == "bf16_cublas":
                    cells.append(f"{num(r['graph_ms'])} ms")
                else:
                    cells.append(f"{num(r['graph_ms'])} ms ({times(r['speedup_graph'])})")
            out.append([f"{n}×{k}", str(b), *cells])
    return ["weight N×K", "batch", *[v for _, v in kernels]], out


def render_quant(data: dict) -> str:
    q = data["quant-minilm-cpu.json"]
    fid = [
        [
            r["pass"],
            r["status"],
            f"{r['quantized_layers']} / {r['skipped_layers']}",
            f"{num(r['pipeline_rel_error'])} / {num(r['tolerance'])}",
            f"{r['cos_min']:.4f} / {r['cos_mean']:.4f}",
            pct(r["retrieval_agreement"]),
            mb(r["weights_bytes"]),
            when(r.get("measured_earlier", q["date"])),
        ]
        for r in q["rows"]
    ]
    rq = {r["pass"]: r for r in q["rows"]}
    w8a8, int8 = rq["int8_dynamic (W8A8)"], rq["int8_weight"]
    g128, g128nc = rq["int4_gptq g128"], rq["int4_gptq g128 no clip"]
    rtn128, fp32 = rq["int4_weight g128"], rq["fp32"]
    g_i4 = GOALS["int4_g128_cos_min"]

    b1 = data["quant-linear-nvidia-h200-b1-fresh-autotune.json"]
    b16 = data["quant-linear-nvidia-h200.json"]
    h1, t1 = _quant_speed(b1, [1])
    h16, t16 = _quant_speed(b16, [16])
    by1 = {(r["n"], r["k"], r["kernel"]): r for r in b1["rows"]}
    large = [(28672, 8192), (8192, 28672)]
    large = [s for s in large if (*s, "bf16_cublas") in by1]

    def sp(kernel: str) -> list[float]:
        return [by1[(*s, kernel)]["speedup_graph"] for s in large if (*s, kernel) in by1]

    floor_x = [
        by1[(*s, "bf16_cublas")]["graph_ms"] / by1[(*s, "int8_weight")]["bandwidth_floor_ms"] for s in large
    ]
    ours = ("int8_weight", f"int4_weight_g{b1['group']}", "fp8_row", "w1a16", "w1a1")
    cublas_plain = {(r["n"], r["k"]): r["plain_ms"] for r in b1["rows"] if r["kernel"] == "bf16_cublas"}
    plain = [r["plain_ms"] for r in b1["rows"] if r["kernel"] in ours]
    plain_slower = all(
        r["plain_ms"] > cublas_plain[(r["n"], r["k"])] for r in b1["rows"] if r["kernel"] in ours
    )
    fmt = lambda xs: " / ".join(times(x) for x in xs)  # noqa: E731
    g8, g4, g1 = GOALS["int8_b1_speedup"], GOALS["int4_b1_speedup"], GOALS["onebit_b1_speedup"]
    i8 = sp("int8_weight")
    return f"""
Weight quantization passes: `quantize.int8_weight` (int8 per output channel), `quantize.int4_weight`
(int4 per group, round-to-nearest), `quantize.int4_gptq` (the same format, codes chosen by GPTQ on
calibration data), `quantize.int8_dynamic` (W8A8), `quantize.fp8` (e4m3 weights and activations),
`quantize.fp8_weight` (e4m3 weights only, decoded by integer ops on any GPU; not yet in the tables
below), `binarize` (W1A16, or W1A1 with `activations=True`).

## Fidelity on a real model

all-MiniLM-L6-v2 on the CPU, {q["sentences"]} sentences, mean-pooled embeddings compared with the fp32
model's; GPTQ and calibrated binarization use {q["calibration_sentences"]} calibration sentences apart from
the evaluation set. fp8 rows are measured on the CPU reference op with `force=True`. "unverified" rows
ran with `verify=False`, which forces a pass the pipeline would roll back.

{
        columns(
            [
                (
                    "status",
                    "what the verified pipeline did: `applied` or `rolled_back` (its contract's check failed)",
                ),
                (
                    "quantized / skipped",
                    "linears quantized / left in full precision (by default embeddings, classifier "
                    'heads and the first and last linear stay full precision; "all linears" overrides that)',
                ),
                (
                    "error / tolerance",
                    "the model's relative output error vs float64 and the contract's threshold",
                ),
                ("cos min / mean", "minimum / mean cosine of the sentence embeddings to the fp32 model's"),
                ("top-1", "retrieval agreement with the fp32 model"),
                (
                    "weights",
                    "size of the saved weights (the fp32 word-embedding table stays fp32 in every row)",
                ),
                ("measured", "when the row was measured"),
            ]
        )
    }

{
        table(
            [
                "pass",
                "status",
                "quantized / skipped",
                "error / tolerance",
                "cos min / mean",
                "top-1",
                "weights",
                "measured",
            ],
            fid,
        )
    }

- W8A8: cos min {w8a8["cos_min"]:.4f} (goal ≥ {GOALS["w8a8_cos_min"]}:
  {met(w8a8["cos_min"] >= GOALS["w8a8_cos_min"])}). int8 weight-only: cos min {int8["cos_min"]:.5f}
  (goal ≥ {GOALS["int8_cos_min"]}: {met(int8["cos_min"] >= GOALS["int8_cos_min"])}), weights
  {mb(int8["weights_bytes"])} vs {mb(fp32["weights_bytes"])} fp32.
- int4 g128: round-to-nearest cos min {rtn128["cos_min"]:.4f}; GPTQ {g128["cos_min"]:.4f} (mean
  {g128["cos_mean"]:.4f}, pipeline error {g128["pipeline_rel_error"]:.3f}) with the clipping search
  (`clip=True`, the default: each group's range may shrink where that lowers its input-energy-weighted
  rounding error) against {g128nc["cos_min"]:.4f} ({g128nc["cos_mean"]:.4f}, {
        g128nc["pipeline_rel_error"]:.3f})
  with `clip=False`. Goal ≥ {g_i4} for g128: {met(g128["cos_min"] >= g_i4)}
  (short by {g_i4 - g128["cos_min"]:.3f} on the minimum).
- Post-training binarization without retraining does not keep this model's embeddings whichever way the
  scales are set: the pipeline refuses `binarize` (error {rq["binarize"]["pipeline_rel_error"]:.2f} >
  {rq["binarize"]["tolerance"]}); forced, its cos mean is {rq["binarize (unverified)"]["cos_mean"]:.2f},
  and the calibrated variant (least-squares α per layer) is worse end to end.

## Speed on the GPU

One linear, bf16 activations, against bf16 cuBLAS, torchao {b16.get("torchao", "?")} and
`torch._scaled_mm` in the same run; every kernel timed as CUDA-graph replays, launches autotuned per
shape. Batch 1 comes from a run with a fresh autotune cache, batch 16 from the full run.

{
        columns(
            [
                ("weight N×K", "the linear's weight shape; **batch**: activation rows"),
                (
                    "each kernel",
                    "time per call, and in brackets cuBLAS's time over it (above 1× faster than bf16 cuBLAS). "
                    "`fp8 e4m3 (row)` and W1A1 include quantizing / binarizing the activations; `_scaled_mm` is given them "
                    "quantized",
                ),
            ]
        )
    }

Batch 1:

{table(h1, t1)}

Batch 16:

{table(h16, t16)}

At batch ≤ 4 the int8, int4 and W1A16 linears run a generated GEMV (one activation row per program, the
packed weight read as 32-bit words, codes decoded with exact bit tricks, no `tl.dot`); for int8 and int4
the autotuner times it against the tensor-core GEMM. Goals on the two large layers at batch 1:

- int8 ≥ {g8}×: {fmt(i8)} — {met(all(x >= g8 for x in i8))} (the bandwidth floor would be {fmt(floor_x)});
- int4 ≥ {g4}×: {fmt(sp(f"int4_weight_g{b1['group']}"))} — {
        met(all(x >= g4 for x in sp(f"int4_weight_g{b1['group']}")))
    }
  (torchao's tinygemm: {fmt(sp(f"torchao_int4wo_g{b1['group']}"))}; both are decode-bound rather than
  bandwidth-bound);
- 1-bit ≥ {g1}×: W1A1 {fmt(sp("w1a1"))}, W1A16 {fmt(sp("w1a16"))} —
  {met(all(x >= g1 for x in sp("w1a1") + sp("w1a16")))}.

W1A1 at batch 16 loses: its XOR tile grows with the batch. Plain (un-graphed) launches of tcomp's quantized
kernels at batch 1 take {span(plain, lambda x: f"{x:.2f}")} ms, slower than plain cuBLAS at every shape:
{met(not plain_slower).replace("met", "no").replace("**not no**", "yes")}. There the Python launcher and the
split-K reduction cost more than the kernel, so decode loops should run under CUDA graphs, as the Triton
backend does on GPU targets.
"""


def render_onnx(data: dict) -> str:
    o = data["onnx-minilm-cpu.json"]
    rows = o["rows"]
    opt = next(r for r in rows if "transformers optimizer" in r["name"])
    contrib = next(r for r in rows if "contrib" in r["name"])
    st = [
        [
            r["name"],
            f"{r['ms']:.0f}",
            times(r["speedup_vs_eager"]),
            times(r["speedup_vs_ort_optimizer"]),
            pct(r["op_time_shares"]["MatMul"], 0) if "op_time_shares" in r else "–",
            num(r["max_abs_err_vs_eager"], 2),
        ]
        for r in rows
    ]
    ratios = [a / b for a, b in zip(opt["round_medians_ms"], contrib["round_medians_ms"])]
    shares = [r["op_time_shares"]["MatMul"] for r in rows if "op_time_shares" in r]
    g = GOALS["onnx_vs_optimizer"]
    load = ", ".join(f"{x:.1f}" for x in o["load_avg"])
    busy = (" (a shared machine: absolute times are above a quiet run's)" if max(o["load_avg"]) > o["threads"]
            else "")  # fmt: skip

    q = data["onnx-quant-minilm-cpu.json"]
    qt = [
        [
            r["pass"],
            r["lowering"]["status"],
            f"{r['cos_min']:.5f} / {r['cos_mean']:.5f}",
            mb(r["onnx_bytes"]),
            times(r["onnx_size_vs_fp32"]),
            ", ".join(f"{k} {v}" for k, v in r["ort_matmul_ops"].items()),
            f"{r['ms']:.1f}",
            times(r["speedup_vs_fp32"]),
        ]
        for r in q["rows"]
    ]
    quant = [r for r in q["rows"] if r["pass"] != "fp32"]
    w8 = next((r for r in q["rows"] if "W8A8" in r["pass"]), None)
    w8_note = next((n for n in (w8["lowering"]["notes"] if w8 else []) if "accepted" in n), "")
    qload = ", ".join(f"{x:.1f}" for x in q["load_avg_before_timing"] + q["load_avg_after_timing"])
    return f"""
With `backend="onnxruntime"` the whole graph is exported with the dynamo ONNX exporter and run by an
ONNX Runtime `InferenceSession`; with the backend's `fused` setting on, tcomp emits ONNX Runtime's
com.microsoft kernels itself (MultiHeadAttention, SkipLayerNormalization, BiasGelu).

## Float model

Real all-MiniLM-L6-v2, batch {o["batch"]}, seq {o["seq"]}, {o["threads"]} threads, {o["rounds"]} interleaved
rounds of {o["runs_per_round"]} runs (onnx {o["onnx"]}, onnxscript {o["onnxscript"]}). Load average during the
run: {load}{busy}; compare the rows with each other.

{
        columns(
            [
                ("ms", "median time per call over all timed calls of all rounds"),
                (
                    "vs eager, vs ORT optimizer",
                    "speed-ups over torch eager and over the ONNX Runtime transformers optimizer's output",
                ),
                ("MatMul share", "share of ONNX Runtime kernel time spent in MatMul (from its profiler)"),
                ("max abs error", "largest absolute difference from torch eager's output"),
            ]
        )
    }

{table(["variant", "ms", "vs eager", "vs ORT optimizer", "MatMul share", "max abs error"], st)}

Round by round, the contrib-op variant ran at a median of {times(statistics.median(ratios))} the optimizer's
speed (range {span(ratios, times)}): the goal (≥ {g}× the optimizer) is {met(statistics.median(ratios) >= g)}.
MatMul is {span(shares, lambda x: pct(x, 0))} of ONNX Runtime kernel time in every profiled variant, and
ONNX Runtime's session optimizer already fuses SkipLayerNorm and BiasGelu by itself, so tcomp's gain can
only come from the fused attention.

## Low-bit models

After a quantization pass the exported model carries the low-bit weights, not float copies. int8
weight-only: int8 initializers → DequantizeLinear → MatMul (ONNX Runtime fuses it into `MatMulNBits`);
W8A8: tcomp's per-token activation quantization from basic ops and `MatMulInteger`; int4:
`com.microsoft.MatMulNBits` on tcomp's packing as is. Each translation matches the eager quantized op on
equal inputs and the lowering is verified (FP_EQUIVALENT). Graphs that round activations at run time
(W8A8, W1A1, fp8) are the exception: a last-bit difference upstream can move a value across a rounding
step, so for them an FP_EQUIVALENT step is accepted when its drift is below the previous stage's own
error vs float64 and the result still meets the approximate passes' tolerance, and the record says so
(here: "{w8_note}").

Real MiniLM, batch {q["batch"]}, seq {q["seq"]}, {q["sentences"]} sentences, {q["threads"]} threads,
{q["rounds"]} interleaved rounds, load average {qload} around the timing.

{
        columns(
            [
                ("lowering", "the verified lowering step's status"),
                ("cos min / mean", "cosine of the sentence embeddings to the fp32 model's"),
                ("ONNX file, vs fp32", "size of the exported model and its ratio to the fp32 export"),
                ("MatMul ops", "the matrix-multiply kernels in ONNX Runtime's optimized graph"),
                ("ms, vs fp32", "median time per call and the fp32 export's time over it"),
            ]
        )
    }

{
        table(
            [
                "pass",
                "lowering",
                "cos min / mean",
                "ONNX file",
                "vs fp32",
                "MatMul ops",
                "ms",
                "vs fp32 speed",
            ],
            qt,
        )
    }

On this CPU every quantized variant is slower than the fp32 export
({span([r["speedup_vs_fp32"] for r in quant], times)}): with batch × seq tokens per call a linear does far
more multiply-adds per weight byte than the memory system limits, so there is no traffic for low-bit weights
to save and the dequantizing kernels only add work; the gain is the file size
({span([r["onnx_size_vs_fp32"] for r in quant], times)} of fp32).
"""
