"""bench/rpe_scaling.py itself, at tiny sizes on the CPU: rows, ratios, errors, JSON, and a size
that runs out of memory recorded as skipped instead of crashing."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "rpe_scaling.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("rpe_scaling_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tiny_run_writes_rows_with_ratios_and_small_errors(bench, tmp_path, monkeypatch):
    import tcomp.dialect

    monkeypatch.setattr(tcomp.dialect.rpe, "RPE_CHUNK_BYTES", None)  # restored after the test: main() sets it
    out = tmp_path / "r.json"
    args = ["--sizes", "16,33", "--heads", "2", "--dim", "8", "--features", "8", "--runs", "1"]
    bench.main([*args, "--out", str(out), "--dtypes", "fp32,bf16", "--causal", "--chunk-bytes", "1"])
    d = json.loads(out.read_text())
    assert d["benchmark"] == "rpe_scaling" and d["causal"] and d["heads"] == 2 and d["chunk_bytes"] == 1
    assert [(r["n"], r["dtype"]) for r in d["rows"]] == [
        (16, "fp32"),
        (33, "fp32"),
        (16, "bf16"),
        (33, "bf16"),
    ]
    for r in d["rows"]:
        assert r["fft_ms"] > 0 and r["quadratic_ms"] > 0 and r["sdpa_bias_ms"] > 0
        assert r["speedup_vs_sdpa_bias"] == pytest.approx(r["sdpa_bias_ms"] / r["fft_ms"])
        assert 0 < r["rel_err_vs_f64"] < (1e-5 if r["dtype"] == "fp32" else 2e-2)
    assert set(d["fitted_exponent"]) == {"fp32", "bf16"}


def test_out_of_memory_is_a_note_not_a_crash(bench):
    row = {"n": 8, "dtype": "fp32"}

    def boom():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB")

    bench.attempt(row, "sdpa_bias_ms", boom)
    assert row["skipped"] == ["sdpa_bias_ms: out of memory"] and "sdpa_bias_ms" not in row
    with pytest.raises(ValueError):  # other errors still surface
        bench.attempt(row, "fft_ms", lambda: (_ for _ in ()).throw(ValueError("bad shape")))
