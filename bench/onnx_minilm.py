"""Real all-MiniLM-L6-v2 (batch 8, seq 128) on this CPU: torch eager, ONNX Runtime on the plain dynamo
export, ONNX Runtime after onnxruntime.transformers' BERT fusion (when importable), and tcomp's
onnxruntime backend. Median of ``--runs`` timed runs after warm-up; writes
bench/results/onnx-minilm-cpu.json.

    python bench/onnx_minilm.py [--runs 20] [--warmup 5]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import write_results  # noqa: E402

BATCH, SEQ = 8, 128


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timeit(fn, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def session(model_bytes: bytes):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument(
        "--out", default=str(Path(__file__).resolve().parent / "results" / "onnx-minilm-cpu.json")
    )
    a = ap.parse_args()

    import onnx

    import tcomp
    import tcomp.backends.onnxruntime  # noqa: F401 - registers the backend
    from tcomp.models import minilm

    mm = minilm.load()
    sentences = (minilm.SENTENCES * ((BATCH + len(minilm.SENTENCES) - 1) // len(minilm.SENTENCES)))[:BATCH]
    inputs = minilm.example_inputs(mm.tokenizer, sentences, max_length=SEQ)
    ids, am = inputs["input_ids"], inputs["attention_mask"]
    enc = mm.encoder.eval()
    feed = {"input_ids": ids.numpy(), "attention_mask": am.numpy()}
    with torch.no_grad():
        ref = enc(ids, attention_mask=am)

    rows = []

    def add(name: str, fn, out=None, **extra) -> None:
        ms = timeit(fn, a.runs, a.warmup)
        err = None if out is None else float((torch.as_tensor(out) - ref).abs().max())
        rows.append({"name": name, "ms": ms, "max_abs_err_vs_eager": err, **extra})
        print(f"{name:40s} {ms:8.2f} ms" + ("" if err is None else f"   max|err| {err:.2e}"), flush=True)

    with torch.no_grad():
        add("torch eager (sdpa)", lambda: enc(ids, attention_mask=am), enc(ids, attention_mask=am))

    # plain dynamo export of the HF encoder
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    prog = torch.onnx.export(
        enc,
        (ids,),
        kwargs={"attention_mask": am},
        dynamo=True,
        dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
        input_names=["input_ids", "attention_mask"],
        verbose=False,
    )
    buf = io.BytesIO()
    onnx.save_model(prog.model_proto, buf)
    plain = buf.getvalue()
    s_plain = session(plain)
    feed_p = {k: v for k, v in feed.items() if k in {i.name for i in s_plain.get_inputs()}}
    add("onnxruntime, plain dynamo export", lambda: s_plain.run(None, feed_p), s_plain.run(None, feed_p)[0])

    try:
        from onnxruntime.transformers.optimizer import optimize_model

        tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "tcomp_minilm_plain.onnx"
        onnx.save_model(prog.model_proto, str(tmp))
        opt = optimize_model(str(tmp), model_type="bert", num_heads=12, hidden_size=384)
        fused_ops = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
        s_opt = session(opt.model.SerializeToString())
        feed_o = {k: v for k, v in feed.items() if k in {i.name for i in s_opt.get_inputs()}}
        add(
            "onnxruntime, transformers optimizer (bert)",
            lambda: s_opt.run(None, feed_o),
            s_opt.run(None, feed_o)[0],
            fused=fused_ops,
        )
    except Exception as exc:  # noqa: BLE001 - optional path
        print(f"transformers optimizer skipped: {type(exc).__name__}: {exc}")
        rows.append(
            {"name": "onnxruntime, transformers optimizer (bert)", "skipped": f"{type(exc).__name__}: {exc}"}
        )

    from tcomp.backend import get_backend

    ort_backend = get_backend("onnxruntime")
    for label, fused in (
        ("tcomp backend=onnxruntime", False),
        ("tcomp backend=onnxruntime, fused MHA", True),
    ):
        ort_backend.fused = fused
        t0 = time.perf_counter()
        om = tcomp.optimize(enc, inputs, backend="onnxruntime")
        compile_s = time.perf_counter() - t0
        rec = om.report["lower.onnxruntime"]
        print(
            f"{label}: optimize {compile_s:.1f} s, lower.onnxruntime {rec.status} (error {rec.error}, tol {rec.tolerance})"
        )
        with torch.no_grad():
            add(
                label,
                lambda om=om: om(ids, attention_mask=am),
                om(ids, attention_mask=am),
                lowering=rec.status,
                compile_s=compile_s,
            )
    ort_backend.fused = False

    base = rows[0]["ms"]
    for r in rows:
        if "ms" in r:
            r["speedup_vs_eager"] = base / r["ms"]
            print(f"  {r['name']:40s} x{r['speedup_vs_eager']:.2f} vs eager")
    write_results(
        a.out,
        "onnx-minilm-cpu",
        rows,
        cpu=cpu_name(),
        threads=torch.get_num_threads(),
        batch=BATCH,
        seq=SEQ,
        runs=a.runs,
        warmup=a.warmup,
        onnxscript=__import__("onnxscript").__version__,
        onnx=onnx.__version__,
    )


if __name__ == "__main__":
    main()
