"""The generation page: the decode-attention kernel and decode steps of whole models."""

from __future__ import annotations

from .common import GOALS, columns, kilo, met, num, pct, table, times

DECODE_ATTN = "decode-attention-nvidia-h100-80gb-hbm3.json"
GENERATE = "generate-nvidia-h100-80gb-hbm3.json"
PROFILE = "profile-decode-8b-b1-nvidia-h200.json"


def _kinds(kernels: dict) -> list[list[str]]:
    """Rows (kind, µs per step, launches) of a profile's kernel sums, largest first."""
    kinds = sorted((k for k in kernels if not k.startswith("launches:")), key=lambda k: -kernels[k])
    return [[k, num(kernels[k]), str(kernels.get(f"launches:{k}", "–"))] for k in kinds]


def render_profile(p: dict) -> str:
    dk, pk = p["decode_kernels"], p["prefill_kernels"]
    d_total = sum(v for k, v in dk.items() if not k.startswith("launches:"))
    p_total = sum(v for k, v in pk.items() if not k.startswith("launches:"))
    return f"""
## Where a decode step's time goes (profile, {p['device']})

`bench/profile_decode.py`: Llama-3-8B shape, batch {p['batch']}, prompt {p['prompt']}, the kernels of one step under
the profiler. {p.get('note', '')}. Floor {num(p['floor_ms'])} ms (copy {num(p['ceilings']['copy_GBps'])} GB/s
measured in the same run).

Decode step: kernels sum to {num(d_total / 1e3)} ms; prefill of {p['prompt']} tokens: {num(p_total / 1e3)} ms of
kernels (wall time without replay: {num(p['step_graph_ms'])} ms and {num(p['prefill_ms'])} ms).

{columns([("kind", "kernels grouped by name"), ("µs", "per decode step"), ("launches", "per decode step")])}

{table(["kind", "µs", "launches"], _kinds(dk))}
"""


def _ratio(cell: dict | None) -> str:
    if not cell:
        return "–"
    if cell.get("refused"):
        return f"refused ({cell.get('why', 'baseline moved')})"
    name = (cell.get("baseline") or "").split("/")[-1]
    return f"{times(cell.get('speedup'))} ({name}, {num(cell.get('us'))} µs)"


def render_generation(data: dict) -> str:
    a = data[DECODE_ATTN]
    rows = sorted(a["rows"], key=lambda r: (r["batch"], r["cache_len"]))
    attn = [
        [
            str(r["batch"]), kilo(r["cache_len"]), num(r["us"]["tcomp"]), num(r["tcomp_GBps"]),
            pct(r["tcomp_fraction_of_copy_same_bytes"], 0), _ratio(r.get("sdpa_prefix")), _ratio(r.get("sdpa_masked_cache")),
        ]
        for r in rows
    ]  # fmt: skip
    every, twice, from_len = GOALS["decode_attention_vs_sdpa"]
    prefix = [r["sdpa_prefix"]["speedup"] for r in rows if r.get("sdpa_prefix", {}).get("speedup")]
    long = [r["sdpa_prefix"]["speedup"] for r in rows if r["cache_len"] >= from_len and r.get("sdpa_prefix", {}).get("speedup")]
    h = rows[0]
    g = data[GENERATE]
    ceil = g["ceilings"]
    gen_rows = []
    for r in g["rows"]:
        if "step_ms" not in r:
            why = r.get("error") or r.get("skipped") or "not measured"
            gen_rows.append([r["model"], str(r["batch"]), r["row"], "–", "–", "–", "–", "–", "–", why[:120]])
            continue
        e2e = r.get("hf_face_generate_ms")
        gen_rows.append(
            [
                r["model"], str(r["batch"]), r["row"], num(r["step_ms"]), num(r["decode_tokens_per_s"]),
                pct(r.get("fraction_of_floor"), 0), times(r.get("speedup_vs_hf_eager")), num(r["prefill_ms"]),
                num(r.get("compile_s")),
                (f"HF generate() over tcomp's graphs: {num(e2e)} ms for {r['new_tokens']} tokens" if e2e else
                 ("unstable" if r.get("unstable") else "")),
            ]
        )  # fmt: skip
    exact = [r for r in g["rows"] if r["row"] == "tcomp_exact" and r.get("batch") == 1 and "fraction_of_floor" in r]
    goal = GOALS["decode_floor_fraction"]
    floor_txt = ", ".join(f"{pct(r['fraction_of_floor'], 0)} ({num(r['step_ms'])} ms vs {num(r['floor_ms'])} ms)" for r in exact)
    return f"""
## Decode attention (`tcomp.cached_attention`, split-KV kernel)

One query token per sequence against a bf16 KV cache of M slots, all valid (B = {h['batch']}, H = {h['heads']},
Hk = {h['kv_heads']}, D = {h['dim']}), every call replayed in a CUDA graph.

{columns([
    ("M", "cache length (= kv_len)"),
    ("tcomp µs / GB/s", "kernel time and the K/V bytes it reads per second"),
    ("of copy", "tcomp's GB/s over a device copy of the same bytes, measured in the same run"),
    ("vs SDPA prefix", "SDPA on the valid prefix only (`enable_gqa=True`), the fastest of its backends; above 1× tcomp is faster"),
    ("vs SDPA masked cache", "SDPA over the whole cache with a mask, what HF's static cache runs"),
])}

{table(["B", "M", "tcomp µs", "tcomp GB/s", "of copy", "vs SDPA prefix", "vs SDPA masked cache"], attn)}

Goals: ≥ {every:.1f}× SDPA at every length: {met(all(x >= every for x in prefix))} ({num(min(prefix))}× at worst);
≥ {twice:.1f}× from {kilo(from_len)}: {met(all(x >= twice for x in long))} ({num(max(long))}× at best). At these lengths
cuDNN's SDPA on the valid prefix is itself at the bandwidth limit, so 2× is out of reach for any kernel
that reads the whole prefix once; the kernel's win is against the masked full cache.

## Linear attention in a decoder: a recurrent state in place of the KV cache

`passes=["attention.linear"]` on a decoder gives each layer whose mask is the plain causal one a state
`S = Σ φ(k)vᵀ`, `z = Σ φ(k)` (float32, `(batch, kv heads, features, head dim)`) in place of its KV cache:
memory per sequence stops growing with `max_len`, and a decode step reads the state instead of every
cached key (`tcomp.recurrent_linear_attention`). The mask is recognised by evaluating the graph's mask
computation on probe inputs (`tcomp/mask_probe.py`), so SDPA's bool masks and eager attention's additive ones
both qualify; sliding-window layers, ALiBi and T5 biases keep softmax and their cache, with the reason in
the report. Checked on the CPU (`tests/generation/test_linear_decoder.py`): a prefill followed by
one-token steps gives the logits of one prefill of the whole sequence (with left padding, and through
the padded prefill buckets) on Llama (SDPA and eager), Qwen2, Phi-3, GPT-2, Falcon, Gemma 3 (its full
layers) and the zoo GPT; greedy `generate()` equals greedy decoding by whole prefills (Llama, zoo GPT). The error against the softmax
model is the pass's EMPIRICAL contract, measured on both graphs; the decode graph is checked after
reading the reference prompt through its own state. Not measured on a GPU yet; the state update runs
as ATen ops there (no Triton kernel of its own).

## Decode steps of a Llama-3-8B-shaped model

Random bf16 weights, prompt {g['rows'][0]['prompt_len']}, {g['rows'][0]['new_tokens']} new tokens, greedy. Ceilings of the last
call: copy {num(ceil['copy_GBps'])} GB/s, bf16 matmul {num(ceil['matmul_bf16_TFLOPs'])} TFLOP/s. The floor is
the bytes read per step (weights + the KV cache at its average length) over the copy bandwidth.

{columns([
    ("step ms / tok/s", "one decode step (replayed CUDA graph for tcomp) and tokens per second"),
    ("of floor", "floor time over step time"),
    ("vs eager", "HF eager's step time over this row's"),
    ("prefill ms", "the prompt's forward (tcomp computes every position's logits)"),
    ("compile s", "`tcomp.optimize` (both graphs, Triton lowering), cold caches"),
])}

{table(["model", "batch", "row", "step ms", "tok/s", "of floor", "vs eager", "prefill ms", "compile s", "note"], gen_rows)}

This run is partial: {g.get('partial', '')}.
Goal: exact bf16 decode at batch 1 at ≥ {pct(goal, 0)} of the floor: {met(all(r['fraction_of_floor'] >= goal for r in exact))}
({floor_txt}).
""" + (render_profile(data[PROFILE]) if PROFILE in data else "")
