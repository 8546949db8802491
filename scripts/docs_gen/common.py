"""Shared pieces of the docs generator: paths, goals, number formatting, the source line and the page frame."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs"

# the script that writes each result file (shown on the pages so a reader can re-run it)
PRODUCER = {
    "attention-h200.json": "bench/attention.py",
    "decode-attention-nvidia-h100-80gb-hbm3.json": "bench/decode_attention.py --batches 1",
    "generate-nvidia-h100-80gb-hbm3.json": "bench/generate.py --batches 1 (three calls, --append; the rows of each: see the JSON's runs)",
    "profile-decode-8b-b1-nvidia-h200.json": "bench/profile_decode.py --model 8b --out DIR",
    "autotune-h200.json": "the autotuner (its cache `~/.cache/tcomp/autotune.json`, copied from the GPU machine)",
    "e2e-h200.json": "bench/e2e.py",
    "linear-attention-h200.json": "bench/linear_attention.py",
    "linear-minilm-cpu.json": "bench/linear_minilm.py",
    "onnx-minilm-cpu.json": "bench/onnx_minilm.py --profile",
    "onnx-quant-minilm-cpu.json": "bench/onnx_quant_minilm.py",
    "quant-linear-nvidia-h200-b1-fresh-autotune.json": "bench/quant_linear.py (batch 1, fresh autotune cache)",
    "quant-linear-nvidia-h200.json": "bench/quant_linear.py",
    "plan-minilm-cpu.json": "bench/plan.py",
    "quant-minilm-cpu.json": "bench/quant_minilm.py",
    "rasp_train.json": "bench/rasp_train.py",
    "rms-norm-nvidia-h100-80gb-hbm3.json": "bench/rms_norm.py",
    "rpe-scaling-cpu.json": "bench/rpe_scaling.py",
    "rpe-scaling-h200.json": "bench/rpe_scaling.py",
    "tome-minilm-cpu.json": "bench/tome_minilm.py",
    "tome-vit-h200.json": "bench/tome_vit.py",
}

# Goals set by the project's issues (targets, not measurements); the pages compute met / not met.
GOALS = {
    "attention_vs_sdpa": (1.0, 4096),  # tcomp/SDPA throughput >= 1.0 at N >= 4096
    "e2e_vs_inductor": 1.0,  # tcomp >= 1.0x Inductor
    "never_slower": 1.0,  # a kernel tcomp picks is >= 1.0x the best baseline (issue 19)
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
    "decode_attention_vs_sdpa": (1.0, 2.0, 32768),  # >= 1.0x SDPA at every cache length, >= 2.0x from 32k
    "decode_floor_fraction": 0.85,
    "plan_vs_uniform": (0.02, 1.5),  # at a 2 % cosine budget the plan saves >= 1.5x the best uniform pass within it  # exact bf16 decode step at batch 1 within 1/0.85 of the bandwidth floor
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
