"""Generate the measurement pages in docs/ from the benchmark results in bench/results/*.json.

Every measured number on the pages is read from (or computed from) a JSON file: nothing measured is
typed here. The only numbers written in this file are the goals the benchmarks are judged against
(``GOALS``, targets set by the project's issues, not measurements) and formatting precisions. Each
page states the device, date and versions its JSON records and what every column means.

    .venv/bin/python scripts/gen_docs.py            # rewrite docs/
    .venv/bin/python scripts/gen_docs.py --check    # exit 1 if docs/ differs from what the JSON gives
    .venv/bin/python scripts/gen_docs.py --out DIR  # write the pages into DIR instead

tests/test_docs.py runs it into a temporary folder and asserts the result equals the committed docs/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs"

# the script that writes each result file (shown on the pages so a reader can re-run it)
PRODUCER = {
    "attention-h200.json": "bench/attention.py",
    "autotune-h200.json": "the autotuner (its cache `~/.cache/tcomp/autotune.json`, copied from the GPU machine)",
    "e2e-h200.json": "bench/e2e.py",
    "linear-attention-h200.json": "bench/linear_attention.py",
    "linear-minilm-cpu.json": "bench/linear_minilm.py",
    "onnx-minilm-cpu.json": "bench/onnx_minilm.py --profile",
    "onnx-quant-minilm-cpu.json": "bench/onnx_quant_minilm.py",
    "quant-linear-nvidia-h200-b1-fresh-autotune.json": "bench/quant_linear.py (batch 1, fresh autotune cache)",
    "quant-linear-nvidia-h200.json": "bench/quant_linear.py",
    "quant-minilm-cpu.json": "bench/quant_minilm.py",
    "rasp_train.json": "bench/rasp_train.py",
    "rpe-scaling-cpu.json": "bench/rpe_scaling.py",
    "rpe-scaling-h200.json": "bench/rpe_scaling.py",
    "tome-minilm-cpu.json": "bench/tome_minilm.py",
    "tome-vit-h200.json": "bench/tome_vit.py",
}

# Goals set by the project's issues (targets, not measurements); the pages compute met / not met.
GOALS = {
    "attention_vs_sdpa": (1.0, 4096),  # tcomp/SDPA throughput >= 1.0 at N >= 4096
    "e2e_vs_inductor": 1.0,  # tcomp >= 1.0x Inductor
    "linear_causal_vs_fla": 1.0,  # causal kernel time <= 1.0x fla's
    "linear_noncausal_vs_torch": 4.0,  # >= 4x a hand-written PyTorch linear attention
    "linear_noncausal_x_floor": 1.5,  # within 1.5x of the bandwidth floor
    "hedgehog_cosine": 0.97,
    "hedgehog_top1": 0.9,
    "rpe_exponent": 1.2,  # fitted time exponent of the FFT op
    "onnx_vs_optimizer": 1.2,  # >= 1.2x ONNX Runtime's transformers optimizer
    "w8a8_cos_min": 0.995,
    "int8_cos_min": 0.999,
    "int4_g128_cos_min": 0.99,
    "int8_b1_speedup": 1.8,
    "int4_b1_speedup": 3.2,
    "onebit_b1_speedup": 6.0,
    "tome_minilm": (0.98, 0.3),  # cosine mean >= 0.98 with >= 30 % of token-layers removed
    "tome_vit_r16": 2.0,  # r=16 >= 2.0x the unmerged model
}

# ----------------------------------------------------------------------------------------- format


def num(x: float | None, sig: int = 3) -> str:
    """``x`` with ``sig`` significant digits: 4441, 36.5, 0.674, 0.0013; below 1e-3 as 8.5e-4."""
    if x is None:
        return "–"
    if x == 0:
        return "0"
    a = abs(x)
    if a >= 10 ** (sig - 1):
        return f"{x:.0f}"
    if a < 1e-3:
        m, e = f"{x:.{sig - 1}e}".split("e")
        return f"{m}e{int(e)}"
    if a >= 1:
        return f"{x:#.{sig}g}".rstrip(".")
    lead = len(f"{a:.12f}".split(".")[1]) - len(f"{a:.12f}".split(".")[1].lstrip("0"))
    return f"{x:.{lead + sig}f}"


def fixed(x: float | None, digits: int) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def times(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}×"


def pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f} %"


def mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:.2f} MB"


def kilo(n: int) -> str:
    """1024 -> 1k, 65536 -> 64k; other values as they are."""
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def span(values: list[float], fmt: Callable[[float], str]) -> str:
    lo, hi = min(values), max(values)
    return fmt(lo) if fmt(lo) == fmt(hi) else f"{fmt(lo)}–{fmt(hi)}"


def when(iso: str) -> str:
    """'2026-11-28T13:35:42+00:00' -> '2026-11-28 13:35 UTC'; a bare date stays as it is."""
    if "T" not in iso:
        return iso
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M UTC")


def met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def columns(defs: list[tuple[str, str]]) -> str:
    return "Columns:\n" + "\n".join(f"- **{name}**: {text}" for name, text in defs)


# ----------------------------------------------------------------------------------------- sources


def versions_of(name: str, d: dict) -> dict[str, str]:
    if "versions" in d:
        return dict(d["versions"])
    if name == "autotune-h200.json":  # versions are part of every cache key
        key = next(iter(d))
        return dict(p.split("=", 1) for p in key.split("|") if "=" in p)
    return {k: d[k] for k in ("torch", "triton", "python") if isinstance(d.get(k), str)}


def device_of(name: str, d: dict) -> str:
    if "device" in d:
        dev = d["device"]
        if dev == "x86_64" and "cpu" in d:
            return f"{d['cpu']} CPU (x86_64), {d['threads']} threads"
        return "CPU (x86_64)" if dev == "x86_64" else dev
    if name == "autotune-h200.json":
        return next(iter(d)).split("|")[-3]
    return "not recorded"


def date_of(d: dict) -> str:
    return when(d["date"]) if "date" in d else "not recorded in the file"


def source(name: str, d: dict) -> str:
    vs = ", ".join(f"{k} {v}" for k, v in versions_of(name, d).items())
    bench = f" (benchmark `{d['benchmark']}`)" if "benchmark" in d else ""
    return (
        f"- [`bench/results/{name}`](../bench/results/{name}){bench}, written by {PRODUCER.get(name, '?')}: "
        f"device **{device_of(name, d)}**, date **{date_of(d)}**, versions: {vs or 'not recorded'}."
    )


class Page:
    """One docs page: its file, title, the result files it reads and the function that renders it."""

    def __init__(self, file: str, title: str, sources: list[str], render: Callable[[dict], str], about: str):
        self.file, self.title, self.sources, self.render, self.about = file, title, sources, render, about

    def text(self, data: dict[str, dict]) -> str:
        head = [
            f"# {self.title}",
            "",
            "<!-- generated by scripts/gen_docs.py from bench/results/*.json; do not edit by hand -->",
            "",
            self.about,
            "",
            "Measured in:",
            *[source(s, data[s]) for s in self.sources],
            "",
        ]
        return "\n".join(head) + "\n" + self.render(data).strip() + "\n"


# ----------------------------------------------------------------------------------------- pages


def render_attention(data: dict) -> str:
    d = data["attention-h200.json"]
    rows = d["rows"]
    ns = sorted({r["n"] for r in rows})
    groups = sorted({(r["d"], r["causal"]) for r in rows})
    by = {(r["d"], r["causal"], r["n"]): r for r in rows}
    tokens = {r["batch"] * r["n"] for r in rows}
    heads = {r["heads"] for r in rows}
    pivot = []
    for dd, causal in groups:
        cells = []
        for n in ns:
            r = by.get((dd, causal, n))
            cells.append(
                "–"
                if r is None
                else f"{r['tcomp_tflops']:.0f} vs {r['sdpa_tflops']:.0f} ({times(r['ratio'])})"
            )
        pivot.append([str(dd), "yes" if causal else "no", *cells])
    goal, from_n = GOALS["attention_vs_sdpa"]
    long = [r for r in rows if r["n"] >= from_n]
    short = {dd: [1 - r["ratio"] for r in long if r["d"] == dd] for dd, _ in groups}
    detail = [
        [
            str(r["d"]),
            "yes" if r["causal"] else "no",
            str(r["n"]),
            str(r["batch"]),
            num(r["tcomp_ms"]),
            num(r["sdpa_ms"]),
            times(r["ratio"], 3),
            num(r["rel_err_vs_sdpa"], 2),
        ]
        for r in rows
    ]
    short_txt = ", ".join(
        f"{span(v, lambda x: f'{100 * x:.0f}')} % short at D = {dd}" for dd, v in short.items()
    )
    return f"""
Forward pass of `tcomp.attention` as the generated flash-style Triton kernel against
`F.scaled_dot_product_attention` (FlashAttention backend), bf16, B·N = {", ".join(kilo(t) for t in tokens)}
tokens per call, H = {", ".join(map(str, heads))} heads.

{
        columns(
            [
                ("D", "head dimension; **causal**: causal mask or none"),
                (
                    "N=…",
                    "tcomp's TFLOP/s vs SDPA's at that sequence length, and their ratio (above 1× tcomp is faster)",
                ),
            ]
        )
    }

{table(["D", "causal", *[f"N={kilo(n)}" for n in ns]], pivot)}

Goal: ≥ {goal:.1f}× SDPA at N ≥ {kilo(from_n)}: {met(all(r["ratio"] >= goal for r in long))} ({short_txt}).
These rows were measured with the fixed per-target tiles, before the attention tiles were autotuned
(see [autotune](autotune.md)); not re-run since.

Every row (times in ms; relative error of tcomp's output against SDPA's):

{table(["D", "causal", "N", "batch", "tcomp ms", "SDPA ms", "tcomp / SDPA", "rel. error vs SDPA"], detail)}
"""


def render_autotune(data: dict) -> str:
    d = data["autotune-h200.json"]
    rows = []
    for key, entry in d.items():
        parts = key.split("|")
        kind, kernel = parts[0], parts[1]
        shape = " ".join(p for p in parts[2:] if p[:1] in "mnkbd" and any(c.isdigit() for c in p))
        dtype = next(p for p in parts if p.startswith("torch."))[len("torch.") :]
        ms = entry["ms"]
        best = entry["best"]
        fused = {k: v for k, v in ms.items() if k != "cublas"}
        best_fused = min(fused, key=fused.get) if fused else None
        rows.append(
            [
                kind,
                f"`{kernel}`",
                shape,
                dtype,
                str(len(ms)),
                f"`{best}`",
                num(ms[best] * 1000),
                num(ms["cublas"] * 1000) if "cublas" in ms else "–",
                f"`{best_fused}` {num(fused[best_fused] * 1000)}" if kind == "gemm" and best_fused else "–",
            ]
        )
    n_gemm = sum(1 for r in rows if r[0] == "gemm")
    n_cublas = sum(1 for r in rows if r[0] == "gemm" and r[5] == "`cublas`")
    return f"""
The autotuner times every candidate launch configuration once per kernel, shape bucket, dtype,
device and versions and keeps the fastest (`TCOMP_AUTOTUNE=0` uses the per-target defaults). For a
linear with a fused epilogue the candidates are generated Triton GEMMs (tiled, and on Hopper
persistent tensor-descriptor/TMA variants) and cuBLAS followed by the epilogue. This page shows the
cache the GPU tests and benchmarks left on the H200 machine.

{
        columns(
            [
                (
                    "kind",
                    "`attn` (attention tiles) or `gemm` (linear + epilogue: `gelu`/`relu`/`silu`/`none`, `_b` bias, "
                    "`_r` residual add, `_ieee` fp32 without TF32)",
                ),
                (
                    "shape",
                    "the shape bucket: `bh` batch·heads, `d`/`dv` head dims, `n`/`m` query/key lengths; for GEMMs "
                    "`m`×`k` activations times a `k`→`n` weight",
                ),
                ("candidates", "how many configurations were timed"),
                (
                    "best",
                    "the configuration kept (`BMxBN[xBK]_g` group, `_w` warps, `_s` stages) and its time in µs",
                ),
                (
                    "cuBLAS µs",
                    "cuBLAS + the unfused epilogue; **best fused µs**: the fastest generated kernel",
                ),
            ]
        )
    }

{
        table(
            [
                "kind",
                "kernel",
                "shape",
                "dtype",
                "candidates",
                "best",
                "best µs",
                "cuBLAS µs",
                "best fused µs",
            ],
            rows,
        )
    }

cuBLAS (+ epilogue) won {n_cublas} of the {n_gemm} GEMM shapes.
"""


def render_e2e(data: dict) -> str:
    d = data["e2e-h200.json"]
    at = data["autotune-h200.json"]
    variants = [
        ("eager", "eager"),
        ("tcomp", "tcomp"),
        ("tcomp_nograph", "tcomp, no CUDA graphs"),
        ("inductor", "Inductor"),
        ("inductor_ro", "Inductor reduce-overhead"),
    ]
    unit = {"bert": "seq/s", "vit": "img/s"}
    speed = [
        [
            f"{r['model']}, batch {r['batch']} ({unit.get(r['model'], 'items/s')})",
            *[f"{r[f'{k}_per_s']:.0f}" for k, _ in variants],
            times(r["tcomp_vs_inductor"]),
            times(r["tcomp_vs_eager"]),
        ]
        for r in d["rows"]
    ]
    comp = [
        [
            r["model"],
            *[f"{r[f'{k}_compile_s']:.1f}" for k, _ in variants[1:]],
            *[num(r[f"{k}_rel_err_vs_eager"], 2) for k, _ in variants[1:]],
        ]
        for r in d["rows"]
    ]
    goal = GOALS["e2e_vs_inductor"]
    ok = all(r["tcomp_vs_inductor"] >= goal for r in d["rows"])
    vit = next((r for r in d["rows"] if r["model"] == "vit"), None)
    gelu = [v for k, v in at.items() if k.startswith("gemm|tcomp_gemm_gelu_b|m65536|n3072|k768|")]
    gelu_txt = ""
    if gelu:
        ms = gelu[0]["ms"]
        fused = min((v, k) for k, v in ms.items() if k != "cublas")
        gelu_txt = (
            f" (the autotuner picked `{gelu[0]['best']}` + GELU: {ms['cublas']:.3f} ms against {fused[0]:.3f} ms "
            f"for the best fused kernel, `{fused[1]}`, at 65536×3072×768; [autotune](autotune.md))"
        )
    vit_txt = (
        f"tcomp is at {times(vit['tcomp_vs_eager'])} of eager on ViT: eager's SDPA runs cuDNN/Flash attention at "
        "this short sequence faster than the generated kernel, and cuBLAS beats the generated GEMM on every "
        f"large shape, so the GELU after the MLP's first linear stays a separate kernel{gelu_txt}. Inductor was "
        "slower than eager on ViT: it decomposes the attention into bmm + softmax."
        if vit
        else ""
    )
    return f"""
Whole models with the exact passes only (`canonicalize`, then lowering to Triton), random-weight
Hugging Face configurations (the models and input sizes are defined in `bench/e2e.py`), bf16, all
variants in the same run.

{
        columns(
            [
                (
                    "eager … Inductor reduce-overhead",
                    "throughput in sequences or images per second: PyTorch eager, tcomp "
                    '(`target="h200"`, CUDA graphs on, the default), tcomp with `cudagraphs=False`, `torch.compile` and '
                    '`torch.compile(mode="reduce-overhead")`',
                ),
                ("tcomp / Inductor, tcomp / eager", "throughput ratios (above 1× tcomp is faster)"),
            ]
        )
    }

{table(["model", *[v for _, v in variants], "tcomp / Inductor", "tcomp / eager"], speed)}

Goal (≥ {goal:.1f}× Inductor): {met(ok)}.

Compile time in seconds (build + the calls until steady state; tcomp's first build includes the first-time
autotuning of every attention and GEMM shape, and the variant without CUDA graphs, built next, finds the
autotune cache warm) and relative error of the output against eager (bf16 noise):

{table(["model", *[f"{v} s" for _, v in variants[1:]], *[f"{v} error" for _, v in variants[1:]]], comp)}

What the profile (`bench/profile_e2e.py`) showed and what was done about it: BERT at this size needs
more host time to issue its few hundred kernels than the GPU needs to run them, hence CUDA graphs; the
attention output copy before the output projection is gone; lone LayerNorms go to the generated
LayerNorm kernel, which moves memory faster than aten's. {vit_txt}
"""


def render_linear_attention(data: dict) -> str:
    k = data["linear-attention-h200.json"]
    rows = k["rows"]
    ns = sorted({r["N"] for r in rows})
    by = {(r["N"], r["causal"]): r for r in rows}
    kt = []
    for n in ns:
        nc, c = by[(n, False)], by[(n, True)]
        kt.append(
            [
                f"{kilo(n)} ({nc['B']})",
                f"{num(nc['tcomp_ms'])} ms",
                f"{nc['x_floor']:.1f}",
                times(nc["speedup_vs_torch"], 1),
                f"{num(c['tcomp_ms'])} ms",
                f"{num(c['fla_ms'])} ms",
                times(c["tcomp_vs_fla"]),
                f"{num(nc['sdpa_ms'])} / {num(c['sdpa_ms'])} ms",
            ]
        )
    causal = [r for r in rows if r["causal"]]
    noncausal = [r for r in rows if not r["causal"]]
    one = rows[0]
    g_fla = GOALS["linear_causal_vs_fla"]
    g_torch = GOALS["linear_noncausal_vs_torch"]
    g_floor = GOALS["linear_noncausal_x_floor"]
    cross = k.get("crossover_n_vs_sdpa", {})

    m = data["linear-minilm-cpu.json"]
    fid = []
    for r in m["rows"]:
        if "measured_earlier" in r:
            measured = (
                f"{when(r['measured_earlier'])}, {r['earlier_calibration_sentences']} calibration sentences"
            )
        else:
            measured = f"{when(r.get('measured', m['date']))}, {m['calibration']} calibration sentences"
        fid.append(
            [
                r["config"],
                f"`{r['pass']}`",
                fixed(r["cosine_mean"], 3),
                pct(r["top1_agreement"]),
                r["pipeline_status"],
                f"{num(r['pipeline_rel_error'])} / {num(r['tolerance'])}",
                str(r["rewrites"]),
                f"{r['seconds_optimize']:.0f}",
                measured,
            ]
        )
    best = next(r for r in m["rows"] if r["config"] == "hedgehog d'=64 calibrated all layers, 300 steps")
    g_cos, g_top = GOALS["hedgehog_cosine"], GOALS["hedgehog_top1"]
    hh = [
        r["seconds_optimize"]
        for r in m["rows"]
        if r["options"].get("feature_map") == "hedgehog" and r["calibrated"] and "measured_earlier" not in r
    ]
    return f"""
## Kernels on the GPU

`tcomp.linear_attention` Triton kernels (two-phase non-causal, chunked causal), {one["dtype"]},
B·N = {kilo(one["B"] * one["N"])} tokens, H = {one["H"]}, D = F = {one["D"]}, autotuned launches, against a
hand-written PyTorch linear attention, SDPA (softmax attention, for the crossover) and
flash-linear-attention ({k.get("fla", "fla")} with `normalize=True`, causal only) in the same run.

{
        columns(
            [
                ("N (B)", "sequence length (batch)"),
                (
                    "non-causal tcomp",
                    "kernel time; **× floor**: that time over the time to move the inputs and output once "
                    "at the GPU's bandwidth; **vs PyTorch**: speed-up over the PyTorch linear attention",
                ),
                (
                    "causal tcomp, fla",
                    "kernel times; **tcomp vs fla**: fla's time over tcomp's (above 1× tcomp is faster)",
                ),
                ("SDPA", "softmax attention's time at the same shape, non-causal / causal"),
            ]
        )
    }

{
        table(
            [
                "N (B)",
                "non-causal tcomp",
                "× floor",
                "vs PyTorch",
                "causal tcomp",
                "fla",
                "tcomp vs fla",
                "SDPA (non-causal / causal)",
            ],
            kt,
        )
    }

- Causal goal (≤ {g_fla:.1f}× fla's time): {met(all(r["tcomp_vs_fla"] >= 1 / g_fla for r in causal))}
  ({span([r["tcomp_vs_fla"] for r in causal], times)} faster).
- Non-causal, ≥ {g_torch:.0f}× the PyTorch linear attention: {
        met(all(r["speedup_vs_torch"] >= g_torch for r in noncausal))
    } ({span([r["speedup_vs_torch"] for r in noncausal], lambda x: times(x, 1))}); within
  {g_floor}× of the bandwidth floor: {met(all(r["x_floor"] <= g_floor for r in noncausal))}
  ({span([r["x_floor"] for r in noncausal], lambda x: f"{x:.1f}×")}).
- Relative difference from the fp32 PyTorch reference:
  {span([r["max_rel_diff_vs_torch"] for r in rows], lambda x: num(x, 2))} (fla:
  {span([r["fla_rel_diff_vs_torch"] for r in causal], lambda x: num(x, 2))}).
- Crossover against SDPA: non-causal from N = {kilo(cross.get("non_causal", 0))}, causal from
  N = {kilo(cross.get("causal", 0))}.

## Fidelity on a real model

Real all-MiniLM-L6-v2 on the CPU, {m["held_out"]} held-out sentences, mean-pooled sentence embeddings compared
with the original model's. `attention.linear` with feature maps `elu1`, `relu`, `favor` (Performer random
features, m of them) or `hedgehog` (learned per head, fitted by attention transfer on calibration sentences,
d' features); `attention.softmax_free` (SOFT, m landmarks). `keep` / `layers="auto"` leave some layers on
softmax.

{
        columns(
            [
                ("cosine", "mean cosine similarity of the sentence embeddings to the original's"),
                (
                    "top-1",
                    "share of sentences whose nearest neighbour among the others is the same as with the original "
                    "model (retrieval agreement; one sentence in the set moves it by a whole step)",
                ),
                (
                    "pipeline",
                    "what the verified pipeline did with the pass: `applied`, `rolled_back` (the contract's "
                    "check failed) or `skipped` (nothing rewritten)",
                ),
                (
                    "error / tolerance",
                    "the model's relative output error vs float64 and the contract's threshold",
                ),
                ("sites", "attention sites rewritten; **s**: seconds to optimize (calibration included)"),
                ("measured", "when the row was measured and on how many calibration sentences"),
            ]
        )
    }

{
        table(
            [
                "configuration",
                "pass",
                "cosine",
                "top-1",
                "pipeline",
                "error / tolerance",
                "sites",
                "s",
                "measured",
            ],
            fid,
        )
    }

Calibrated hedgehog on every layer with 300 fitting steps per layer (`{best["config"]}`): cosine
{fixed(best["cosine_mean"], 3)} (goal ≥ {g_cos}: {met(best["cosine_mean"] >= g_cos)}), retrieval
{pct(best["top1_agreement"])} (goal ≥ {pct(g_top, 0)}: {met(best["top1_agreement"] >= g_top)}). Retrieval
moves in steps of one sentence in {m["held_out"]} and varies between configurations of equal cosine, so read
it with that resolution. The attention-transfer levers (output loss, sequential fitting, per-head output
correction) move the cosine little; calibrated hedgehog took {span(hh, lambda x: f"{x:.0f}")} s per
configuration on this CPU. Hybrids that keep one or two softmax layers score highest.
"""


def render_rpe(data: dict) -> str:
    def rows_of(d: dict) -> list[list[str]]:
        return [
            [
                kilo(r["n"]),
                r["dtype"],
                f"{num(r['fft_ms'])} ms",
                f"{num(r['quadratic_ms'])} ms",
                f"{num(r['sdpa_bias_ms'])} ms",
                num(r["rel_err_vs_f64"], 2),
                times(r["speedup_vs_quadratic"]),
                times(r["speedup_vs_sdpa_bias"], 3),
            ]
            for r in d["rows"]
        ]

    cpu, gpu = data["rpe-scaling-cpu.json"], data["rpe-scaling-h200.json"]
    hdr = [
        "n",
        "dtype",
        "FFT op",
        "quadratic kernelized-RPE",
        "SDPA + bias",
        "error vs f64",
        "FFT vs quadratic",
        "FFT vs SDPA",
    ]
    exps = ", ".join(f"{k} {v:.2f}" for k, v in gpu["fitted_exponent"].items())
    g = GOALS["rpe_exponent"]
    big = max(gpu["rows"], key=lambda r: (r["n"], r["dtype"] == "bf16"))
    channels = gpu["features"] * gpu["dim"]
    fp32_big = max((r for r in gpu["rows"] if r["dtype"] == "fp32"), key=lambda r: r["n"])
    d1_gb = fp32_big["n"] * channels * 4 * gpu["heads"] / 1e9
    sdpa_gflop = 4 * fp32_big["n"] ** 2 * gpu["dim"] * gpu["heads"] / 1e9
    slowest = (
        "yes" if all(r["fft_ms"] > max(r["quadratic_ms"], r["sdpa_bias_ms"]) for r in cpu["rows"]) else "no"
    )
    return f"""
`attention.rpe_fft` turns softmax sites whose bias depends only on j − i (ALiBi, T5 buckets, learned
offset tables) into `tcomp.rpe_linear_attention`, which computes Σ_j c_(j−i) φ(k_j)[v_j, 1]ᵀ for all i
with one FFT convolution in O(n log n). The benchmark times that op against SDPA with the bias
materialised as `attn_mask` and against the quadratic kernelized-RPE reference, batch {gpu["batch"]},
H = {gpu["heads"]}, D = {gpu["dim"]}, F = {gpu["features"]} features, non-causal.

{
        columns(
            [
                ("FFT op, quadratic kernelized-RPE, SDPA + bias", "time per call of each"),
                ("error vs f64", "the FFT op's relative error against a float64 evaluation"),
                ("FFT vs …", "the other's time over the FFT op's (below 1× the FFT op is slower)"),
            ]
        )
    }

On the H200 (fitted time exponent of the FFT op for the longer lengths: {exps}):

{table(hdr, rows_of(gpu))}

The FFT op scales as promised (goal: exponent ≤ {g}: {
        met(all(v <= g for v in gpu["fitted_exponent"].values()))
    })
but at n = {kilo(big["n"])} ({big["dtype"]}) it is {times(1 / big["speedup_vs_quadratic"], 1)} slower than the
quadratic reference and {times(1 / big["speedup_vs_sdpa_bias"], 0)} slower than SDPA. The reason is the
algorithm's memory traffic, not the FFT: it holds F·Dv = {channels} channels per head and position,
{d1_gb:.1f} GB at n = {kilo(fp32_big["n"])} in fp32, streamed through several passes, while flash attention
with the bias stays compute-bound at {sdpa_gflop:.0f} GFLOP. The FFT form pays off only at far longer
sequences at these feature sizes, or with far fewer features (F·Dv ≪ n).

On the CPU ({cpu["runs"]} runs each, on a shared machine):

{table(hdr, rows_of(cpu))}

On the CPU the FFT op is the slowest of the three at every length measured: {slowest}.
"""


def render_tome(data: dict) -> str:
    m = data["tome-minilm-cpu.json"]
    fid = [
        [
            r["schedule"],
            pct(r["tokens_removed_avg"], 0),
            pct(r["tokens_removed_end"], 0),
            f"{fixed(r['cosine_mean'], 3)} / {fixed(r['cosine_min'], 3)}",
            fixed(r["top1_agreement"], 2),
        ]
        for r in m["rows"]
    ]
    fid += [
        [
            r["schedule"] + " (padding merged first)",
            pct(r["positions_removed_avg"], 0) + " of positions",
            "–",
            f"{fixed(r['cosine_mean'], 3)} / {fixed(r['cosine_min'], 3)}",
            fixed(r["top1_agreement"], 2),
        ]
        for r in m.get("padded_batch", [])
    ]
    lens = m["token_lengths"]
    v = data["tome-vit-h200.json"]
    base = next(r for r in v["rows"] if r["variant"] == "tcomp triton r=0")
    sp = [
        [
            r["variant"],
            f"{r['images_per_s']:.0f}",
            times(r["images_per_s"] / base["images_per_s"]) if r.get("backend") == "triton" else "",
            num(r["rel_err_vs_eager"], 2) if "rel_err_vs_eager" in r else "",
        ]
        for r in v["rows"]
    ]
    r16 = next(r for r in v["rows"] if r["variant"] == "tcomp triton r=16")
    g_cos, g_rm = GOALS["tome_minilm"]
    e16 = next((r for r in v["rows"] if r["variant"] == "tcomp eager r=16"), None)
    eager_txt = (
        f" On the eager reference ops r=16 gives {times(e16['speedup_vs_unmerged'])} over eager r=0."
        if e16
        else ""
    )
    return f"""
`tokens.merge` (ToMe): between attention and MLP of each encoder block, bipartite soft matching on the
attention keys merges the `r` most similar token pairs by size-weighted average; later attention is
proportional (a log(size) bias). With `outputs="unmerge"` (the default) the token count is restored
after the last block, so output shapes never change.

## Fidelity on a real model

all-MiniLM-L6-v2 on the CPU, each of the {m["sentences"]} sentences embedded alone
({min(lens)}–{max(lens)} tokens), then all of them in one padded batch.

{
        columns(
            [
                (
                    "token-layers removed",
                    "share of (token, layer) pairs the merges removed, averaged over the blocks",
                ),
                ("removed at the end", "share of tokens gone after the last block"),
                ("cosine", "mean / minimum cosine of the mean-pooled sentence embedding to the original's"),
                ("top-1", "retrieval agreement: share of sentences whose nearest neighbour is unchanged"),
            ]
        )
    }

{table(["schedule", "token-layers removed", "removed at the end", "cosine mean / min", "top-1"], fid)}

Goal ({m["goal"]}): {
        met(any(r["cosine_mean"] >= g_cos and r["tokens_removed_avg"] >= g_rm for r in m["rows"]))
    }.
These sentences are short, with little redundancy to merge.

## Speed on the GPU

`{v["model"]}`, random init, batch {v["batch"]}, {v["dtype"]}, images/s in the same run. The merge runs on the
Triton backend as one generated gather-sum kernel after a sync-free matching plan, so the merged model
replays as one CUDA graph.

{
        columns(
            [
                ("images/s", "throughput"),
                ("vs tcomp triton r=0", "throughput over tcomp's unmerged model on the Triton backend"),
                ("error vs eager", "relative error of the output against eager PyTorch"),
            ]
        )
    }

{table(["variant", "images/s", "vs tcomp triton r=0", "error vs eager"], sp)}

Goal ({v["goal"]}): {met(r16["speedup_vs_unmerged"] >= GOALS["tome_vit_r16"])} ({
        times(r16["speedup_vs_unmerged"])
    }).{eager_txt}
The merged model has not been profiled since the merge became one kernel.
"""


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
`binarize` (W1A16, or W1A1 with `activations=True`).

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
rounds of {o["runs_per_round"]} runs (onnx {o["onnx"]}, onnxscript {o["onnxscript"]}). The machine was
shared: load average {load} during the run, so absolute times are far above a quiet run's; compare the rows
with each other.

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


RASP_PRESETS = {
    None: "one-variable readout (the model's output is one categorical variable)",
    "linear": 'linear readout (a classifier over every variable, `ProgramConfig(readout="linear")`)',
    "closest": "linear readout plus closest-selection heads",
    "closest-wide": "a wider model with more width and closest heads and MLPs",
    "authors": "the sizes of the authors' released runs, batch 512",
}


def _rasp_config(c: dict) -> str:
    names = [
        ("cat_heads", "cat"),
        ("width_heads", "width"),
        ("closest_heads", "closest"),
        ("num_heads", "num"),
        ("mlps", "MLP"),
        ("num_mlps", "num MLP"),
    ]
    parts = [f"{c[k]} {v}" for k, v in names if c.get(k)]
    return f"{c['layers']} × ({', '.join(parts)})"


def render_rasp(data: dict) -> str:
    d = data["rasp_train.json"]
    rows = d["rows"]
    tasks = list(dict.fromkeys(r["task"] for r in rows))

    def dev(r: dict) -> str:
        x = r.get("device", d["device"])
        return "CPU" if x in ("cpu", "x86_64") else x.replace("NVIDIA ", "")

    best = []
    for t in tasks:
        rs = [r for r in rows if r["task"] == t]
        b = max(rs, key=lambda r: r["val_accuracy"])
        top_test = max(r["program_accuracy"] for r in rs)
        best.append(
            [
                t,
                f"**{pct(b['program_accuracy'], 2)}**",
                f"`{b.get('preset') or 'one-variable'}`, {dev(b)}",
                "yes" if b["program_accuracy"] == top_test else "no",
                pct(b["authors_log_accuracy"], 2),
                str(sum(1 for r in rs)),
            ]
        )
    full = [
        [
            r["task"],
            f"`{r.get('preset') or 'one-variable'}`",
            dev(r),
            _rasp_config(r["config"]),
            f"{r['steps']} × {r['restarts']} (batch {r['training']['batch']}, lr {r['training']['lr']})",
            pct(r["val_accuracy"], 2),
            pct(r["program_accuracy"], 2),
            pct(r["agreement"], 0),
            f"{r['train_seconds']:.0f}",
        ]
        for r in rows
    ]
    presets = list(dict.fromkeys(r.get("preset") for r in rows))
    preset_lines = []
    for p in presets:
        base = p.removesuffix("-noisy") if p else p
        text = RASP_PRESETS.get(base, "see `bench/rasp_train.py`")
        if p and p.endswith("-noisy"):
            text += (
                ", with full-scale Gumbel noise in training (`train(gumbel=1.0)`; the default scales it down)"
            )
        preset_lines.append(f"- `{p or 'one-variable'}`: {text}.")
    agree = all(r["agreement"] == 1.0 for r in rows)
    return f"""
`tcomp.rasp` is the RASP language (an evaluator, a printer to Python, static validation, a compiler to
PyTorch weights) and `rasp.extract` reads a RASP program back from a trained Transformer-Program-style
model (Friedman et al. 2023). The benchmark trains such models on the paper's tasks, extracts their
programs and scores model and program on a held-out test split (every token counted). Data as in the
authors' scripts; several restarts per task, the restart with the best validation accuracy kept and scored
once on the test split. The printed programs are kept next to the JSON in `bench/results/rasp/`.

Presets of `bench/rasp_train.py` (the exact layer sizes are in each row below):

{chr(10).join(preset_lines)}

{
        columns(
            [
                (
                    "best",
                    "test accuracy of the extracted program from the row with the highest validation accuracy "
                    "(the first such row on a tie); "
                    "**also best on test**: whether that row also has the highest test accuracy of the task",
                ),
                (
                    "authors' log",
                    "the last (argmax) test accuracy in the training logs the authors released "
                    "(princeton-nlp/TransformerPrograms, `scripts/output/rasp/<task>/…/s0/results.csv`, one seed of their "
                    "3-layer, 4 + 4-head runs; not the paper's Table 1); – where no log exists",
                ),
                (
                    "layers × (heads, MLPs)",
                    "categorical, width (SelectorWidth), closest-selection and numerical heads and "
                    "the MLPs of each layer",
                ),
                ("steps × restarts", "training steps per restart, restarts; batch size and learning rate"),
                (
                    "validation, test",
                    "accuracy on the validation split and the extracted program's on the test split",
                ),
                ("agreement", "share of test tokens where the extracted program and the model agree"),
                ("s", "training seconds"),
            ]
        )
    }

{table(["task", "best", "preset, device", "also best on test", "authors' log", "rows"], best)}

The extracted program agrees with the model on every test token in every row: {"yes" if agree else "**no**"}.

Every row:

{
        table(
            [
                "task",
                "preset",
                "device",
                "layers × (heads, MLPs)",
                "steps × restarts",
                "validation",
                "test",
                "agreement",
                "s",
            ],
            full,
        )
    }
"""


PAGES = [
    Page(
        "attention.md",
        "Attention kernel",
        ["attention-h200.json"],
        render_attention,
        "The generated Triton attention kernel (`tcomp.attention` on the `triton` backend) against PyTorch's SDPA.",
    ),
    Page(
        "e2e.md",
        "End to end",
        ["e2e-h200.json", "autotune-h200.json"],
        render_e2e,
        "Whole models through `tcomp.optimize` on the Triton backend against eager PyTorch and `torch.compile`.",
    ),
    Page(
        "linear-attention.md",
        "Linear and softmax-free attention",
        ["linear-attention-h200.json", "linear-minilm-cpu.json"],
        render_linear_attention,
        "`attention.linear` and `attention.softmax_free`: the kernels' speed and the fidelity on a real model.",
    ),
    Page(
        "rpe-fft.md",
        "Relative position bias through FFT",
        ["rpe-scaling-h200.json", "rpe-scaling-cpu.json"],
        render_rpe,
        "`attention.rpe_fft`: the O(n log n) FFT op against softmax attention with the bias.",
    ),
    Page(
        "token-merging.md",
        "Token merging",
        ["tome-minilm-cpu.json", "tome-vit-h200.json"],
        render_tome,
        "`tokens.merge` (ToMe): fidelity on a real text model and speed on a ViT.",
    ),
    Page(
        "quantization.md",
        "Quantization",
        [
            "quant-minilm-cpu.json",
            "quant-linear-nvidia-h200-b1-fresh-autotune.json",
            "quant-linear-nvidia-h200.json",
        ],
        render_quant,
        "The weight-quantization passes: fidelity on a real model and the low-bit kernels' speed.",
    ),
    Page(
        "onnxruntime.md",
        "ONNX Runtime backend",
        ["onnx-minilm-cpu.json", "onnx-quant-minilm-cpu.json"],
        render_onnx,
        '`backend="onnxruntime"` on a real model, float and low-bit.',
    ),
    Page(
        "rasp.md",
        "RASP and Transformer Programs",
        ["rasp_train.json"],
        render_rasp,
        "Trained Transformer Programs and the RASP programs `rasp.extract` reads back from them.",
    ),
    Page(
        "autotune.md",
        "Autotuned launch configurations",
        ["autotune-h200.json"],
        render_autotune,
        "What the autotuner chose on the H200, and how close the alternatives were.",
    ),
]


def render_index(data: dict[str, dict]) -> str:
    used = {s: p for p in PAGES for s in p.sources}
    page_rows = [[f"[{p.title}]({p.file})", p.about] for p in PAGES]
    file_rows = []
    for name in sorted(data):
        d = data[name]
        page = used.get(name)
        file_rows.append(
            [
                f"[`{name}`](../bench/results/{name})",
                device_of(name, d),
                date_of(d),
                f"[{page.file}]({page.file})" if page else "not rendered (add it to scripts/gen_docs.py)",
            ]
        )
    return f"""# Measurements

<!-- generated by scripts/gen_docs.py from bench/results/*.json; do not edit by hand -->

Every number on these pages is read from the benchmark results in `bench/results/*.json` by
`scripts/gen_docs.py`; nothing measured is typed by hand. Each page names the files it reads with their
device, date and library versions. Numbers from different files were measured at different times, on
different machines: compare rows within one table.

To change a page, re-run its benchmark (the script named on the page), then regenerate:

```sh
.venv/bin/python scripts/gen_docs.py          # rewrites docs/
.venv/bin/python scripts/gen_docs.py --check  # what tests/test_docs.py checks: docs/ matches the JSON
```

## Pages

{table(["page", "what it measures"], page_rows)}

## Result files

{table(["file", "device", "date", "page"], file_rows)}
"""


# ----------------------------------------------------------------------------------------- driver


def load_results(results: Path = RESULTS) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(results.glob("*.json"))}


def generate(results: Path = RESULTS) -> dict[str, str]:
    """File name -> markdown of every docs page, computed from the JSON files in ``results``."""
    data = load_results(results)
    pages = {"index.md": render_index(data).strip() + "\n"}
    for p in PAGES:
        missing = [s for s in p.sources if s not in data]
        if missing:
            raise SystemExit(f"{p.file}: result file(s) {missing} not found in {results}")
        pages[p.file] = p.text(data)
    return pages


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DOCS, help="folder to write the pages into (default docs/)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder of the JSON results")
    ap.add_argument(
        "--check", action="store_true", help="compare with --out instead of writing; exit 1 on any change"
    )
    args = ap.parse_args(argv)
    pages = generate(args.results)
    if args.check:
        stale = [
            f
            for f, text in pages.items()
            if not (args.out / f).is_file() or (args.out / f).read_text() != text
        ]
        extra = [p.name for p in args.out.glob("*.md") if p.name not in pages]
        for f in stale + extra:
            print(f"{args.out / f}: differs from what scripts/gen_docs.py generates", file=sys.stderr)
        return 1 if stale or extra else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for f, text in pages.items():
        (args.out / f).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
