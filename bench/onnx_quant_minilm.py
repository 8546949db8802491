"""Low-bit ONNX export on the real all-MiniLM-L6-v2 (this CPU): tcomp's quantization passes followed by
``backend="onnxruntime"`` (translations: backends/onnxruntime/qlinear.py) against the fp32 export.

Per pass: the pipeline's verdicts (the pass vs float64, the lowering's drift from the eager
quantized graph), the embedding cosine to fp32 torch on models.minilm.SENTENCES (mean-pooled,
normalised; as bench/quant_minilm.py), nearest-neighbour retrieval agreement, the ONNX model's
bytes and the saved artifact's weight file, and latency at batch 8, sequence 128: all variants
built first, then timed interleaved (``--rounds`` rounds of ``--runs`` calls after ``--warmup``),
reporting the median of all timed calls and the spread of the per-round medians, as
bench/onnx_minilm.py does. Writes bench/results/onnx-quant-minilm-cpu.json.

    python bench/onnx_quant_minilm.py [--rounds 5] [--runs 6] [--warmup 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from onnx_minilm import BATCH, SEQ, cpu_name, interleaved  # noqa: E402
from quant_minilm import nearest  # noqa: E402
from results_io import write_results  # noqa: E402

import tcomp  # noqa: E402
import tcomp.backends.onnxruntime  # noqa: E402,F401 - registers the backend
from tcomp.models import minilm  # noqa: E402

PASSES = [
    ("fp32", []),
    ("int8_weight", [("quantize.int8_weight", {})]),
    ("int8_dynamic (W8A8)", [("quantize.int8_dynamic", {})]),
    ("int4_weight g128", [("quantize.int4_weight", {"group": 128})]),
    ("int4_weight g32", [("quantize.int4_weight", {"group": 32})]),
]


def onnx_ops(model_bytes: bytes) -> dict[str, int]:
    """Op types of the exported model and, after ORT's optimizations, of the graph it runs."""
    import onnx
    import onnxruntime as ort

    counts: dict[str, int] = {}
    path = Path(tempfile.mkdtemp()) / "opt.onnx"
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")  # as the backend
    opts.optimized_model_filepath = str(path)
    ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    for n in onnx.load(str(path)).graph.node:
        if n.op_type in ("MatMul", "MatMulNBits", "MatMulInteger", "DequantizeLinear", "Gemm", "FusedMatMul"):
            counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=6, help="timed calls per variant per round")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls per variant per round")
    ap.add_argument(
        "--out", default=str(Path(__file__).resolve().parent / "results" / "onnx-quant-minilm-cpu.json")
    )
    a = ap.parse_args()
    torch.manual_seed(0)
    m = minilm.load()
    enc = m.encoder.eval()
    inputs = minilm.example_inputs(m.tokenizer, minilm.SENTENCES)
    mask = inputs["attention_mask"]
    ref = m.embed(minilm.SENTENCES)  # fp32 torch
    batch = (minilm.SENTENCES * ((BATCH + len(minilm.SENTENCES) - 1) // len(minilm.SENTENCES)))[:BATCH]
    timed_in = minilm.example_inputs(m.tokenizer, batch, max_length=SEQ)
    assert tuple(timed_in["input_ids"].shape) == (BATCH, SEQ), timed_in["input_ids"].shape

    rows, fns = [], []
    for label, passes in PASSES:
        t0 = time.perf_counter()
        om = tcomp.optimize(enc, inputs, passes=passes, backend="onnxruntime")
        build_s = time.perf_counter() - t0
        recs = {r.name: r for r in om.report.passes}
        low = recs["lower.onnxruntime"]
        lowering = {"status": low.status, "reason": low.reason, "notes": low.notes}
        if low.status != "applied":  # measured anyway, unverified; the row says so
            print(f"{label}: lower.onnxruntime {low.status}: {low.reason}; timing the unverified export")
            om = tcomp.optimize(enc, inputs, passes=passes, backend="onnxruntime", verify=False)
        q = recs.get(passes[0][0]) if passes else None
        with torch.no_grad():
            emb = minilm.mean_pool(om(**inputs), mask)
        cos = (emb * ref).sum(-1)
        onnx_bytes = bytes(om.graph_module._onnx_model.numpy())
        with tempfile.TemporaryDirectory() as d:
            om.save(d + "/art")
            size = os.path.getsize(d + "/art/weights.safetensors")
        row = {
            "pass": label,
            "pass_status": q.status if q else "-",
            "pass_rel_error_vs_fp64": q.error if q else None,
            "quantized_layers": sum(s["status"] == "quantized" for s in q.sites) if q else 0,
            "lowering": lowering,
            "lowering_rel_error_vs_fp64": low.error,
            "lowering_tolerance": low.tolerance,
            "cos_min": cos.min().item(),
            "cos_mean": cos.mean().item(),
            "retrieval_agreement": (nearest(emb) == nearest(ref)).float().mean().item(),
            "onnx_bytes": len(onnx_bytes),
            "artifact_weights_bytes": size,
            "ort_matmul_ops": onnx_ops(onnx_bytes),
            "build_s": build_s,
        }
        rows.append(row)
        fns.append(lambda om=om: om(**timed_in))
        print(
            f"built {label:22s} cos_min={row['cos_min']:.5f} cos_mean={row['cos_mean']:.5f} "
            f"nn={row['retrieval_agreement']:.3f} onnx={len(onnx_bytes) / 1e6:.2f} MB "
            f"ops={row['ort_matmul_ops']} ({build_s:.0f} s)",
            flush=True,
        )

    load_before = os.getloadavg()
    times, round_medians = interleaved(fns, a.rounds, a.runs, a.warmup)
    base_ms, base_size = statistics.median(times[0]), rows[0]["onnx_bytes"]
    for r, t, rm in zip(rows, times, round_medians):
        r["ms"] = statistics.median(t)
        r["round_medians_ms"] = rm
        r["speedup_vs_fp32"] = base_ms / r["ms"]
        r["onnx_size_vs_fp32"] = r["onnx_bytes"] / base_size
        print(
            f"  {r['pass']:22s} {r['ms']:7.1f} ms (rounds {min(rm):.1f}-{max(rm):.1f}) x{r['speedup_vs_fp32']:.2f}"
            f"  size {r['onnx_size_vs_fp32']:.3f} of fp32  cos_min {r['cos_min']:.5f}"
        )
    write_results(
        a.out,
        "onnx-quant-minilm-cpu",
        rows,
        cpu=cpu_name(),
        threads=torch.get_num_threads(),
        batch=BATCH,
        seq=SEQ,
        sentences=len(minilm.SENTENCES),
        rounds=a.rounds,
        runs_per_round=a.runs,
        warmup_per_round=a.warmup,
        load_avg_before_timing=load_before,
        load_avg_after_timing=os.getloadavg(),
    )


if __name__ == "__main__":
    main()
