"""Real all-MiniLM-L6-v2 (batch 8, seq 128) on this CPU: torch eager, ONNX Runtime on the plain dynamo
export, ONNX Runtime after onnxruntime.transformers' BERT fusion (when importable), and tcomp's
onnxruntime backend (standard ops; com.microsoft contrib ops: MultiHeadAttention,
SkipLayerNormalization, BiasGelu). All variants are built first, then timed interleaved: ``--rounds``
rounds, each running every variant ``--runs`` times after ``--warmup`` calls, so load from other
processes on the machine hits them alike. Reported: the median over all timed calls and the spread
of the per-round medians. Writes bench/results/onnx-minilm-cpu.json.

    python bench/onnx_minilm.py [--rounds 5] [--runs 8] [--warmup 2]
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


def time_calls(fn, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def interleaved(fns, rounds: int, runs: int, warmup: int) -> tuple[list[list[float]], list[list[float]]]:
    """(all times, per-round medians) of each of ``fns``, timed round by round in turn so that a
    change in the machine's load falls on every variant alike."""
    times: list[list[float]] = [[] for _ in fns]
    round_medians: list[list[float]] = [[] for _ in fns]
    with torch.no_grad():
        for rnd in range(rounds):
            for i, fn in enumerate(fns):
                t = time_calls(fn, runs, warmup)
                times[i] += t
                round_medians[i].append(statistics.median(t))
            print(f"round {rnd + 1}/{rounds}: " + " ".join(f"{m[-1]:.1f}" for m in round_medians), flush=True)
    return times, round_medians


def session(model_bytes: bytes):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def op_time_shares(model_bytes: bytes, feed: dict, runs: int = 4) -> dict[str, float]:
    """Share of ORT kernel time per op type (ORT's profiler, ``runs`` calls after one warm-up)."""
    import json
    import tempfile

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.enable_profiling = True
    opts.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort")
    sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    feed = {k: v for k, v in feed.items() if k in {i.name for i in sess.get_inputs()}}
    for _ in range(runs + 1):
        sess.run(None, feed)
    totals: dict[str, float] = {}
    for ev in json.loads(Path(sess.end_profiling()).read_text()):
        if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
            op = ev["args"]["op_name"]
            totals[op] = totals.get(op, 0.0) + ev["dur"]
    whole = sum(totals.values())
    return {k: round(v / whole, 4) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=8, help="timed calls per variant per round")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls per variant per round")
    ap.add_argument("--profile", action="store_true", help="record ORT's kernel time share per op type")
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
    fns = []

    def add(name: str, fn, out=None, **extra) -> None:
        err = None if out is None else float((torch.as_tensor(out) - ref).abs().max())
        rows.append({"name": name, "max_abs_err_vs_eager": err, **extra})
        fns.append(fn)
        print(f"built {name}" + ("" if err is None else f"   max|err| {err:.2e}"), flush=True)

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
            op_time_shares=op_time_shares(opt.model.SerializeToString(), feed) if a.profile else None,
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
        ("tcomp backend=onnxruntime, contrib ops (MHA, SkipLN, BiasGelu)", True),
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
                lowering_notes=rec.notes,
                op_time_shares=(
                    op_time_shares(bytes(om.graph_module._onnx_model.numpy()), feed) if a.profile else None
                ),
                rel_error_vs_fp64=rec.error,
                compile_s=compile_s,
            )
    ort_backend.fused = False

    times, round_medians = interleaved(fns, a.rounds, a.runs, a.warmup)
    timed = [r for r in rows if "skipped" not in r]
    for r, t, rm in zip(timed, times, round_medians):
        r["ms"] = statistics.median(t)
        r["round_medians_ms"] = rm
    base = timed[0]["ms"]
    opt = next((r["ms"] for r in timed if "optimizer" in r["name"]), None)
    for r in timed:
        r["speedup_vs_eager"] = base / r["ms"]
        if opt is not None:
            r["speedup_vs_ort_optimizer"] = opt / r["ms"]
        spread = f"{min(r['round_medians_ms']):.1f}-{max(r['round_medians_ms']):.1f}"
        print(
            f"  {r['name']:62s} {r['ms']:7.1f} ms (rounds {spread})  x{r['speedup_vs_eager']:.2f} vs eager"
            + (f"  x{r['speedup_vs_ort_optimizer']:.2f} vs ORT optimizer" if opt else "")
        )
    write_results(
        a.out,
        "onnx-minilm-cpu",
        rows,
        cpu=cpu_name(),
        threads=torch.get_num_threads(),
        batch=BATCH,
        seq=SEQ,
        rounds=a.rounds,
        runs_per_round=a.runs,
        warmup_per_round=a.warmup,
        load_avg=os.getloadavg(),
        onnxscript=__import__("onnxscript").__version__,
        onnx=onnx.__version__,
    )


if __name__ == "__main__":
    main()
