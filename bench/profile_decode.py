"""Where a decoder's time goes: the prefill and the decode step of a tcomp-compiled Llama-shaped model
(random bf16 weights, as ``bench/generate.py`` builds them) under the profiler, kernels grouped by
kind, against the step's CUDA-graph replay time and the bandwidth floor; and cuBLAS on the decode
GEMV shapes (batch rows 1 and 16), with the copy bandwidth measured in the same run.

    python bench/profile_decode.py [--model 8b|1b] [--batch 1] [--prompt 512] [--out DIR]

Prints tables; with ``--out`` also writes ``profile-decode-<model>-b<batch>.json`` there (kernel
sums per step, the top kernels, GEMV bandwidths). A diagnosis tool: nothing here goes to the README.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from generate import MODELS, Clock, build_model, ceilings, target_of
from torch.profiler import ProfilerActivity, profile

KINDS = [  # first match wins
    ("attention", r"decode|flash|attn|combine"),
    ("gemv/gemm (cuBLAS)", r"gemv|gemm|sm90|sm80|xmma|cutlass|splitK|Kernel2"),
    ("gemm/gemv (tcomp)", r"tcomp_gemm|tcomp_gemv|tcomp_linear|tcomp_.*mm"),
    ("norm", r"rms|norm"),
    ("fused elementwise (tcomp)", r"tcomp_fused|tcomp_ew|fused"),
    ("cache write", r"index_copy|index_put|scatter"),
    ("cat/copy", r"cat|copy|Copy"),
    ("other elementwise", r"elementwise|vectorized|unrolled|reduce"),
]


def kind_of(name: str) -> str:
    for kind, pat in KINDS:
        if re.search(pat, name, re.IGNORECASE):
            return kind
    return "other"


def kernels(fn, steps: int) -> tuple[dict[str, float], list[tuple[str, int, float]]]:
    """Per-step GPU microseconds by kind, and the kernels (name, launches per step, us per step)."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    per: dict[str, list] = defaultdict(lambda: [0, 0.0])
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            per[ev.name][0] += 1
            per[ev.name][1] += ev.device_time_total if hasattr(ev, "device_time_total") else ev.cuda_time_total
    rows = sorted(((n, c // steps, t / steps) for n, (c, t) in per.items()), key=lambda r: -r[2])
    by_kind: dict[str, float] = defaultdict(float)
    launches: dict[str, int] = defaultdict(int)
    for n, c, t in rows:
        by_kind[kind_of(n)] += t
        launches[kind_of(n)] += c
    return {k: round(v, 1) for k, v in by_kind.items()} | {
        f"launches:{k}": v for k, v in launches.items()
    }, rows


def show(title: str, by_kind: dict, rows: list, top: int = 25) -> None:
    print(f"\n== {title}")
    total = sum(v for k, v in by_kind.items() if not k.startswith("launches:"))
    for k, v in sorted(by_kind.items(), key=lambda kv: str(kv[0])):
        print(f"  {k:40s} {v:10.1f}")
    print(f"  {'kernel total (us)':40s} {total:10.1f}   launches {sum(c for _, c, _ in rows)}")
    for n, c, t in rows[:top]:
        print(f"    {t:9.1f} us  x{c:<4d} {n[:110]}")


def gemvs(hidden: int, inter: int, heads: int, kv: int, vocab: int, clock: Clock) -> list[dict]:
    """cuBLAS ``F.linear`` on the decode shapes, GB/s of the weight read (separate and concatenated
    q/k/v and gate/up too)."""
    d = hidden // heads
    shapes = {
        "q/o": (hidden, hidden), "k/v": (kv * d, hidden), "qkv (cat)": ((heads + 2 * kv) * d, hidden),
        "gate/up": (inter, hidden), "gate+up (cat)": (2 * inter, hidden), "down": (hidden, inter),
        "lm_head": (vocab, hidden),
    }  # fmt: skip
    out = []
    for m in (1, 16):
        for name, (n, k) in shapes.items():
            w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            for _ in range(3):
                F.linear(x, w)
            ms = statistics.median(clock(lambda w=w, x=x: F.linear(x, w))[1] for _ in range(30))
            out.append({"m": m, "name": name, "n": n, "k": k, "us": ms * 1e3, "GBps": n * k * 2 / ms / 1e6})
            print(f"  M={m:<3d} {name:14s} N={n:<7d} K={k:<6d} {ms * 1e3:8.1f} us  {n * k * 2 / ms / 1e6:7.0f} GB/s")
            del w
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="8b", choices=sorted(MODELS))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    import tcomp

    device = torch.device("cuda")
    clock = Clock(device)
    ceil = ceilings(device, clock, smoke=False)
    print(f"copy {ceil['copy_GBps']:.0f} GB/s, bf16 matmul {ceil['matmul_bf16_TFLOPs']:.0f} TFLOP/s")
    cfg = MODELS[args.model]
    model = build_model(cfg, device, 0, {})
    ids = torch.randint(1, cfg["vocab_size"], (args.batch, args.prompt), device=device)
    new = 64
    t0 = time.perf_counter()
    fast = tcomp.optimize(model, {"input_ids": ids}, target=target_of(device, None), max_len=args.prompt + new,
                          max_batch=args.batch, verify=False)  # as bench/generate.py: no float64 CPU reference of 8B  # fmt: skip
    t1 = time.perf_counter()
    dec = fast.tcomp_decoder
    tcomp.generate(fast, ids, max_new_tokens=8, eos_token_id=[])  # autotune, capture the decode graph
    torch.cuda.synchronize()
    result: dict = {"model": args.model, "batch": args.batch, "prompt": args.prompt, "ceilings": ceil,
                    "optimize_s": t1 - t0, "first_generate_s": time.perf_counter() - t1,
                    "device": torch.cuda.get_device_name(), "torch": torch.__version__}  # fmt: skip
    print(f"optimize {result['optimize_s']:.1f} s, first generate (autotune, captures) {result['first_generate_s']:.1f} s")
    weights = sum(t.numel() * t.element_size() for t in model.parameters())
    result["floor_ms"] = weights / ceil["copy_GBps"] / 1e6
    tok = torch.randint(1, cfg["vocab_size"], (args.batch, 1), device=device)
    step = lambda: dec.step(tok, start=args.prompt)  # noqa: E731
    for _ in range(5):
        step()
    result["step_graph_ms"] = statistics.median(clock(step)[1] for _ in range(args.steps))
    print(f"decode step {result['step_graph_ms']:.3f} ms as a CUDA graph; floor {result['floor_ms']:.3f} ms "
          f"({result['floor_ms'] / result['step_graph_ms']:.0%} of the floor's speed)", flush=True)  # fmt: skip
    save(args, result)

    prefill = lambda: dec.step(ids, start=0)  # noqa: E731
    for _ in range(3):
        prefill()
    result["prefill_ms"] = statistics.median(clock(prefill)[1] for _ in range(5))  # a CUDA graph on GPU targets
    graphs, dec._prefill_runner = dec._prefill_runner, None
    result["prefill_direct_ms"] = statistics.median(clock(prefill)[1] for _ in range(5))
    by_kind, rows = kernels(prefill, 3)
    dec._prefill_runner = graphs
    show(f"prefill {args.prompt} tokens: {result['prefill_ms']:.2f} ms as a CUDA graph, "
         f"{result['prefill_direct_ms']:.2f} ms launched one by one", by_kind, rows)  # fmt: skip
    result["prefill_kernels"] = by_kind
    result["prefill_top"] = rows[:30]

    save(args, result)
    runner, dec._decode_runner = dec._decode_runner, None
    result["step_eager_ms"] = statistics.median(clock(step)[1] for _ in range(args.steps))
    by_kind, rows = kernels(step, 5)
    dec._decode_runner = runner
    show(
        f"decode step: {result['step_graph_ms']:.3f} ms as a CUDA graph, {result['step_eager_ms']:.3f} ms launched "
        f"one by one; floor {result['floor_ms']:.3f} ms (weights {weights / 1e9:.2f} GB)", by_kind, rows, top=40,
    )  # fmt: skip
    result["decode_kernels"] = by_kind
    result["decode_top"] = rows[:60]
    save(args, result)

    # the generation loop against the bare steps it runs: host work between steps shows here
    new_tokens = 33
    tcomp.generate(fast, ids, max_new_tokens=new_tokens, eos_token_id=[])
    _, gen_ms = clock(lambda: tcomp.generate(fast, ids, max_new_tokens=new_tokens, eos_token_id=[]))

    def bare():
        t = dec.step(ids, start=0)[:, -1:].argmax(-1)
        for i in range(new_tokens - 1):
            t = dec.step(t, start=args.prompt + i)[:, -1:].argmax(-1)

    _, bare_ms = clock(bare)
    result.update(generate_ms=gen_ms, bare_steps_ms=bare_ms, generate_tokens=new_tokens)
    print(f"\n== tcomp.generate of {new_tokens} tokens: {gen_ms:.1f} ms; prefill + steps alone: {bare_ms:.1f} ms")
    if gen_ms > 1.3 * bare_ms:
        import cProfile
        import io
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        tcomp.generate(fast, ids, max_new_tokens=new_tokens, eos_token_id=[])
        torch.cuda.synchronize()
        prof.disable()
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(25)
        print(text.getvalue()[-6000:])

    print("\n== cuBLAS on the decode shapes")
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    result["gemv"] = gemvs(cfg["hidden_size"], cfg["intermediate_size"], heads, kv, cfg["vocab_size"], clock)
    save(args, result)
    if args.out:
        (Path(args.out) / f"decode-graph-{args.model}.py").write_text(dec.decode_module.code)


def save(args, result: dict) -> None:
    """Write what is measured so far (a run cut short keeps it)."""
    if args.out:
        from results_io import environment

        path = Path(args.out) / f"profile-decode-{args.model}-b{args.batch}.json"
        path.write_text(json.dumps({"benchmark": "profile_decode", **environment(), **result}, indent=1, default=str))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
