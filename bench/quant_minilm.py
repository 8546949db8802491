"""Fidelity of the quantization passes (weight-only int8/int4 (round-to-nearest, GPTQ and AWQ), W8A8, fp8 e4m3, 1-bit) on the real all-MiniLM-L6-v2 (CPU, eager backend):
sentence-embedding cosine to the fp32 model on models.minilm.SENTENCES, nearest-neighbour
retrieval agreement, the pipeline's measured relative error, and the artifact's weight file size.
Writes bench/results/quant-minilm-cpu.json.

    python bench/quant_minilm.py
    python bench/quant_minilm.py --only "int4_awq"   # rerun matching rows, keep the others
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from linear_minilm import CALIBRATION  # noqa: E402
from results_io import write_results  # noqa: E402

import tcomp  # noqa: E402
from tcomp.models import minilm  # noqa: E402

PASSES = [
    ("fp32", []),
    ("int8_weight", [("quantize.int8_weight", {})]),
    ("int8_weight all linears", [("quantize.int8_weight", {"skip_first_last": False})]),
    ("int4_weight g32", [("quantize.int4_weight", {"group": 32})]),
    ("int4_weight g64", [("quantize.int4_weight", {"group": 64})]),
    ("int4_weight g128", [("quantize.int4_weight", {"group": 128})]),
    ("int4_weight g128 all linears", [("quantize.int4_weight", {"group": 128, "skip_first_last": False})]),
    ("int4_gptq g128", [("quantize.int4_gptq", {"group": 128})]),
    ("int4_gptq g32", [("quantize.int4_gptq", {"group": 32})]),
    ("int4_gptq g128 no act_order", [("quantize.int4_gptq", {"group": 128, "act_order": False})]),
    ("int4_gptq g128 no clip", [("quantize.int4_gptq", {"group": 128, "clip": False})]),
    ("int4_awq g128", [("quantize.int4_awq", {"group": 128})]),
    ("int4_awq g32", [("quantize.int4_awq", {"group": 32})]),
    ("int4_awq g128 no clip", [("quantize.int4_awq", {"group": 128, "clip": False})]),
    ("int8_dynamic (W8A8)", [("quantize.int8_dynamic", {})]),
    ("int8_dynamic all linears", [("quantize.int8_dynamic", {"skip_first_last": False})]),
    # fp8 needs fp8 tensor cores (h100/h200); force=True runs it here on the reference op, which
    # simulates e4m3 exactly as the kernel rounds (same numbers, only the fp32 summation order differs)
    ("fp8 row (e4m3, forced)", [("quantize.fp8", {"force": True})]),
    ("fp8 tensor (e4m3, forced)", [("quantize.fp8", {"granularity": "tensor", "force": True})]),
    ("fp8 row all linears (forced)", [("quantize.fp8", {"force": True, "skip_first_last": False})]),
    ("binarize", [("binarize", {})]),
    ("binarize (unverified)", [("binarize", {})]),
    ("binarize calibrated (unverified)", [("binarize", {})]),
    (
        "binarize FFN only (unverified)",
        [("binarize", {"include": ("*intermediate.dense", "*layer.?.output.dense")})],
    ),
    (
        "binarize FFN only calibrated (unverified)",
        [("binarize", {"include": ("*intermediate.dense", "*layer.?.output.dense")})],
    ),
    ("binarize all linears (unverified)", [("binarize", {"skip_first_last": False})]),
    ("binarize W1A1 (unverified)", [("binarize", {"activations": True})]),
    ("binarize W1A1 calibrated (unverified)", [("binarize", {"activations": True})]),
]
# rows labelled "(unverified)" run with verify=False: the pipeline would roll an over-tolerance pass
# back, these measure what the pass itself does (hidden_rel_error is measured here for every row).
# Calibration batches go to GPTQ, AWQ and to the rows labelled "calibrated" only (binarize fits its
# scales and thresholds when it gets them).


CALIBRATED_PASSES = ("quantize.int4_gptq", "quantize.int4_awq")


def uses_calibration(label: str, passes: list) -> bool:
    return "calibrated" in label or any(name in CALIBRATED_PASSES for name, _ in passes)


def nearest(e: torch.Tensor) -> torch.Tensor:
    sim = e @ e.T
    sim.fill_diagonal_(-2.0)
    return sim.argmax(dim=1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="", help="comma-separated substrings of row labels to (re)measure")
    args = ap.parse_args()
    only = [t for t in args.only.split(",") if t]
    torch.manual_seed(0)
    m = minilm.load()
    inputs = minilm.example_inputs(m.tokenizer, minilm.SENTENCES)
    mask = inputs["attention_mask"]
    ref = m.embed(minilm.SENTENCES)
    with torch.no_grad():
        hidden = m.encoder(**inputs)
    rows = []
    # calibration (GPTQ, AWQ) on sentences kept apart from the evaluation set, batches of 8
    calibration = [
        minilm.example_inputs(m.tokenizer, CALIBRATION[i : i + 8]) for i in range(0, len(CALIBRATION), 8)
    ]
    for label, passes in PASSES:
        if only and not any(t in label for t in only):
            continue
        verify = not label.endswith("(unverified)")
        calib = calibration if uses_calibration(label, passes) else None
        t0 = time.perf_counter()
        om = tcomp.optimize(
            m.encoder, inputs, passes=passes, backend="eager", verify=verify, calibration=calib
        )
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            out = om(**inputs)
            emb = minilm.mean_pool(out, mask)
        cos = (emb * ref).sum(-1)
        rec = om.report.passes[-1] if passes else None
        with tempfile.TemporaryDirectory() as d:
            om.save(d + "/art")
            size = os.path.getsize(d + "/art/weights.safetensors")
        sites = rec.sites if rec else []
        row = {
            "pass": label,
            "status": rec.status if rec else "-",
            "quantized_layers": sum(s["status"] == "quantized" for s in sites),
            "skipped_layers": sum(s["status"] == "skipped" for s in sites),
            "pipeline_rel_error": rec.error if rec else None,
            "tolerance": rec.tolerance if rec else None,
            "hidden_rel_error": ((out - hidden).norm() / hidden.norm()).item(),
            "cos_min": cos.min().item(),
            "cos_mean": cos.mean().item(),
            "retrieval_agreement": (nearest(emb) == nearest(ref)).float().mean().item(),
            "weights_bytes": size,
            "optimize_seconds": round(seconds, 1),
        }
        rows.append(row)
        print(
            f"{label:30s} {row['status']:8s} q={row['quantized_layers']:2d} skip={row['skipped_layers']:2d} "
            f"err={row['pipeline_rel_error'] or 0:.4f} hid={row['hidden_rel_error']:.4f} cos_min={row['cos_min']:.5f} "
            f"cos_mean={row['cos_mean']:.5f} nn_agree={row['retrieval_agreement']:.3f} bytes={size}"
        )
    out = Path(__file__).resolve().parent / "results" / "quant-minilm-cpu.json"
    if only and out.exists():  # keep the rows not rerun, marked with the date they were measured
        old = json.loads(out.read_text())
        fresh = {r["pass"] for r in rows}
        kept = [{"measured_earlier": old["date"], **r} if "measured_earlier" not in r else r
                for r in old["rows"] if r["pass"] not in fresh]  # fmt: skip
        order = [label for label, _ in PASSES]
        rows = sorted(kept + rows, key=lambda r: order.index(r["pass"]) if r["pass"] in order else len(order))
    write_results(
        out, "quant_minilm", rows, sentences=len(minilm.SENTENCES), calibration_sentences=len(CALIBRATION)
    )


if __name__ == "__main__":
    main()
