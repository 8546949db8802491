"""Token generation on the GPU: tcomp's compiled decoders against Hugging Face generate (eager, and
static cache + ``torch.compile``) and torchao weight-only quantization, in one process.

Models: Llama-3-8B and Llama-3.2-1B shapes (``--models 8b,1b``) with random bf16 weights built on
the GPU (no download). Prompt of 512 random tokens, 256 new tokens, greedy (``min_new_tokens`` so every
row generates all of them), batch 1 and 16. Rows (``--rows``, all by default):

  hf_eager          model.generate, SDPA, default dynamic cache
  hf_compile        static cache + torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
                    (the documented recipe; ``--hf-compile auto`` uses generate's own compile instead)
  tcomp_exact       tcomp.optimize, default passes, target from the device name (h100 / h200)
  tcomp_int8        + quantize.int8_weight
  tcomp_int4_g128   + quantize.int4_weight group 128
  tcomp_fp8_wo      fp8 weight-only: recorded "no pass" unless such a pass is registered
  tcomp_fp8_w8a8    + quantize.fp8 (e4m3 weights and dynamic e4m3 activations, per row)
  tcomp_kv_int8     the exact passes over an int8 KV cache (optimize(kv_cache="int8"))
  torchao_int8      torchao int8 weight-only under the hf_compile recipe
  torchao_int4_g128 torchao int4 weight-only g128 under the hf_compile recipe
                    (torchao absent: the row says why; it is never dropped)

Per row: ms per decode step, decode tokens/s, prefill ms, end-to-end tokens/s, the ratio to
hf_compile (and to hf_eager), the fraction of the bandwidth floor, compile time, and correctness.
HF rows: decode step = (generate 256 tokens - generate 1 token) / 255. tcomp rows: ``runner.step`` timed
directly (prefill, then 255 greedy steps), plus the whole ``tcomp.generate``. Each row is warmed and
timed twice; two timings more than 10 % apart mark the row unstable (no ratio). Correctness: greedy
agreement with hf_eager's tokens (fraction equal, first mismatch), and per-step relative logit error
on the first 16 steps with every row fed hf_eager's tokens (teacher forcing): exact rows against
hf_eager's logits, quantized rows against tcomp_exact's. Ceilings measured in the same run: device copy
bandwidth and the bf16 matmul rate; the floor of a decode step is the bytes it must read (weights as
stored -- packed for quantized rows, read from the graph's tensors -- plus the filled KV cache) over
the copy bandwidth.

Writes bench/results/generate-<gpu>.json after every row (a run cut short keeps what it measured).

    python bench/generate.py [--models 8b,1b] [--batches 1,16] [--rows hf_eager,tcomp_exact,...]
    python bench/generate.py --smoke      # CPU: tiny configs, few tokens (checks the script end to end)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import write_results  # noqa: E402

ROWS = [
    "hf_eager", "hf_compile", "tcomp_exact", "tcomp_int8", "tcomp_int4_g128", "tcomp_fp8_wo", "tcomp_fp8_w8a8",
    "tcomp_kv_int8", "torchao_int8", "torchao_int4_g128",
]  # fmt: skip
BASELINE = "hf_compile"
UNSTABLE = 0.10  # two timings further apart than this: no ratio
LOGIT_STEPS = 16
GROUP = 128

LLAMA = dict(
    num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, rms_norm_eps=1e-5, max_position_embeddings=8192,
    attn_implementation="sdpa", bos_token_id=None, eos_token_id=None, pad_token_id=0,
)  # fmt: skip
MODELS = {
    "8b": dict(LLAMA, hidden_size=4096, num_hidden_layers=32, intermediate_size=14336, tie_word_embeddings=False),
    "1b": dict(LLAMA, hidden_size=2048, num_hidden_layers=16, intermediate_size=8192, tie_word_embeddings=True),
}
# --smoke: the same two structures (untied / tied embeddings), tiny
SMOKE = {
    "8b": dict(MODELS["8b"], hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=256, vocab_size=256),
    "1b": dict(MODELS["1b"], hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=256, vocab_size=256),
}  # fmt: skip
ROPE = {"rope_type": "default", "rope_theta": 500000.0}


def err_text(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


# ---------------------------------------------------------------------- timing


class Clock:
    """Milliseconds of ``fn()``: CUDA events on the GPU (synchronized), perf_counter on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self, fn) -> tuple[Any, float]:
        if self.cuda:
            torch.cuda.synchronize()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            out = fn()
            b.record()
            b.synchronize()
            return out, a.elapsed_time(b)
        t = time.perf_counter()
        out = fn()
        return out, (time.perf_counter() - t) * 1e3


def seconds(clock: Clock, fn) -> tuple[Any, float]:
    """Wall seconds of ``fn()`` (compile times: host work included), synchronized."""
    clock.sync()
    t = time.perf_counter()
    out = fn()
    clock.sync()
    return out, time.perf_counter() - t


def ceilings(device: torch.device, clock: Clock, smoke: bool) -> dict[str, Any]:
    """Copy bandwidth (read + write bytes of a large ``copy_``, GB/s) and the bf16 matmul rate."""
    n = (1 << 22) if smoke else (1 << 29)  # 8 MiB / 1 GiB of bf16
    m = 256 if smoke else 8192
    copy_ms = _median_ms(clock, _copy_fn(n, device), 10 if smoke else 30)
    mm_ms = _median_ms(clock, _matmul_fn(m, device), 5 if smoke else 20)
    return {
        "copy_bytes": 2 * n * 2, "copy_ms": copy_ms, "copy_GBps": 2 * n * 2 / copy_ms / 1e6,
        "matmul_shape": [m, m, m], "matmul_ms": mm_ms, "matmul_bf16_TFLOPs": 2 * m**3 / mm_ms / 1e9,
    }  # fmt: skip


def _copy_fn(n: int, device: torch.device):
    x = torch.randn(n, device=device, dtype=torch.bfloat16)
    y = torch.empty_like(x)
    return lambda: y.copy_(x)


def _matmul_fn(m: int, device: torch.device):
    a = torch.randn(m, m, device=device, dtype=torch.bfloat16)
    b = torch.randn(m, m, device=device, dtype=torch.bfloat16)
    return lambda: a @ b


def _median_ms(clock: Clock, fn, iters: int) -> float:
    for _ in range(3):
        fn()
    return statistics.median(clock(fn)[1] for _ in range(iters))


# ---------------------------------------------------------------------- models and bytes


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(prev)


def build_model(cfg: dict, device: torch.device, seed: int, notes: dict):
    """A Llama causal LM built on ``device`` in bf16, weights random normal (std 0.02; norm weights
    1 + N(0, 0.02)), deterministic in ``seed`` (rebuilding gives the same weights)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    try:
        config = LlamaConfig(**cfg, rope_parameters=dict(ROPE))
    except Exception as exc:  # noqa: BLE001 - a transformers without rope_parameters: its default rope
        notes["rope_parameters"] = f"not accepted ({err_text(exc)}); the config's default rope"
        config = LlamaConfig(**cfg)
    with default_dtype(torch.bfloat16), torch.device(device):
        model = LlamaForCausalLM(config)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied weights are listed once
            noise = torch.empty(p.shape, device=device, dtype=torch.float32).normal_(0.0, 0.02, generator=gen)
            p.copy_(noise + 1.0 if p.dim() == 1 and "norm" in name else noise)
    return model.eval()


def checksum(model: torch.nn.Module) -> float:
    with torch.no_grad():
        return float(sum(p.float().abs().sum() for p in model.parameters()))


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor holds; tensor subclasses (torchao's quantized weights) by their inner tensors."""
    if type(t) not in (torch.Tensor, torch.nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def model_weight_bytes(model: torch.nn.Module, batch: int) -> dict[str, int]:
    """Bytes one decode step of an HF model reads: every parameter, except an untied embedding
    table, of which only ``batch`` rows are read."""
    linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    lm_head = getattr(model, "lm_head", None)
    if lm_head is not None and getattr(lm_head, "weight", None) is not None:
        linear_weights.add(id(lm_head.weight))
    embeds = {id(m.weight): m for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    total = read = 0
    for p in model.parameters():
        nb = tensor_bytes(p)
        total += nb
        if id(p) in embeds and id(p) not in linear_weights:
            read += batch * p.shape[-1] * p.element_size()
        else:
            read += nb
    return {"param_bytes": total, "weight_bytes_read": read}


def graph_weight_bytes(gm: torch.fx.GraphModule, batch: int) -> dict[str, int]:
    """Bytes one step of a tcomp graph reads from its own tensors (packed, as stored): each storage
    once; the KV cache and the padding mask left out (the cache is counted by its filled length);
    a tensor read only by embedding lookups counts ``batch`` rows."""
    named = dict(gm.named_parameters(remove_duplicate=False)) | dict(gm.named_buffers(remove_duplicate=False))
    embed_only: dict[str, bool] = {}
    for node in gm.graph.nodes:
        if node.op != "get_attr" or node.target not in named:
            continue
        only = bool(node.users) and all(
            u.op == "call_function" and "embedding" in str(u.target) and u.args and u.args[0] is node
            for u in node.users
        )
        embed_only[node.target] = embed_only.get(node.target, True) and only
    by_storage: dict[int, tuple[torch.Tensor, bool]] = {}
    for name, t in named.items():
        if name.startswith("tcomp_kv_") or name.rsplit(".", 1)[-1] == "padding":
            continue
        key = t.untyped_storage().data_ptr() if t.device.type != "meta" else id(t)
        prev = by_storage.get(key)
        only = embed_only.get(name, False)
        by_storage[key] = (t, only if prev is None else (prev[1] and only))
    total = read = 0
    for t, only in by_storage.values():
        nb = tensor_bytes(t)
        total += nb
        read += batch * t.shape[-1] * t.element_size() if only and t.dim() == 2 else nb
    return {"param_bytes": total, "weight_bytes_read": read}


def kv_bytes_read(cfg: dict, batch: int, avg_len: float, int8: bool = False) -> float:
    """K and V bytes a step reads: bf16, or (``int8``) one byte a value plus a float32 scale per slot."""
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    per_slot = head_dim + 4 if int8 else head_dim * 2
    return 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * per_slot * avg_len * batch


def prefill_flops(cfg: dict, batch: int, prompt: int) -> float:
    """Matmul flops of a prefill (linears of every layer on every token, attention causal, the LM
    head on the last token only)."""
    h, inter, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    head_dim = h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * head_dim
    per_layer = h * h * 2 + 2 * h * kv + 3 * h * inter  # q, o, k, v, gate, up, down
    tokens = batch * prompt
    return 2 * layers * per_layer * tokens + 2 * layers * batch * prompt * prompt * h + 2 * h * cfg["vocab_size"] * batch


# ---------------------------------------------------------------------- correctness


def agreement(tokens: torch.Tensor, ref: torch.Tensor, prompt: int) -> dict[str, Any]:
    a, r = tokens[:, prompt:], ref[:, prompt:]
    n = min(a.shape[1], r.shape[1])
    same = a[:, :n] == r[:, :n]
    first = [int((~row).nonzero()[0]) if (~row).any() else n for row in same]
    return {"greedy_agreement": float(same.float().mean()), "first_mismatch_min": min(first),
            "first_mismatch_per_row": first}  # fmt: skip


def logit_errors(logits: torch.Tensor, ref: torch.Tensor) -> dict[str, Any]:
    """Per step (over batch x vocab): relative L2 error and max |diff| / max |ref|."""
    a, r = logits.float(), ref.float()
    rel = [float((a[:, s] - r[:, s]).norm() / r[:, s].norm().clamp_min(1e-30)) for s in range(r.shape[1])]
    mx = [float((a[:, s] - r[:, s]).abs().max() / r[:, s].abs().max().clamp_min(1e-30)) for s in range(r.shape[1])]
    finite = bool(torch.isfinite(a).all())
    return {"logit_rel_err_max": max(rel) if finite else float("nan"), "logit_rel_err_per_step": rel,
            "logit_maxabs_rel_err_max": max(mx) if finite else float("nan"), "logits_finite": finite}  # fmt: skip


def hf_forced_logits(model, ids: torch.Tensor, tokens: torch.Tensor, steps: int) -> torch.Tensor:
    """Logits (b, steps, vocab) of the first ``steps`` generation steps when the model is fed
    ``tokens`` (b, >= steps - 1): one forward over prompt + tokens, no cache (version-independent)."""
    p = ids.shape[1]
    full = torch.cat([ids, tokens[:, : steps - 1]], dim=1)
    out = model.model(input_ids=full, use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return model.lm_head(hidden[:, p - 1 : p - 1 + steps]).float()


def tcomp_forced_logits(runner, ids: torch.Tensor, tokens: torch.Tensor, steps: int) -> torch.Tensor:
    p = ids.shape[1]
    out = [runner.step(ids, start=0)[:, -1].float()]
    for i in range(steps - 1):
        out.append(runner.step(tokens[:, i : i + 1], start=p + i)[:, -1].float())
    return torch.stack(out, dim=1)


# ---------------------------------------------------------------------- rows


def hf_generate(model, ids: torch.Tensor, new: int):
    return model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new, do_sample=False,
        pad_token_id=0,
    )  # fmt: skip


def stable(values: list[float]) -> tuple[float, bool]:
    moved = (max(values) - min(values)) / min(values) if min(values) > 0 else float("inf")
    return moved, moved > UNSTABLE


def hf_timings(model, ids: torch.Tensor, new: int, clock: Clock, repeats: int) -> dict[str, Any]:
    """(generate ``new`` tokens - generate 1 token) / (new - 1) per decode step, ``repeats`` times."""
    b = ids.shape[0]
    runs = []
    for _ in range(repeats):
        out, full_ms = clock(lambda: hf_generate(model, ids, new))
        _, pre_ms = clock(lambda: hf_generate(model, ids, 1))
        runs.append({"generate_ms": full_ms, "prefill_ms": pre_ms, "step_ms": (full_ms - pre_ms) / (new - 1)})
    row = summarize(runs, b, new)
    return row, out


def summarize(runs: list[dict], batch: int, new: int) -> dict[str, Any]:
    steps = [r["step_ms"] for r in runs]
    moved, unstable = stable(steps)
    step = min(steps)
    gen = min(r["generate_ms"] for r in runs)
    row = {
        "step_ms": step, "decode_tokens_per_s": batch * 1e3 / step if step > 0 else None,
        "prefill_ms": min(r["prefill_ms"] for r in runs), "generate_ms": gen,
        "e2e_tokens_per_s": batch * new * 1e3 / gen, "timings": runs, "step_moved": moved,
    }  # fmt: skip
    if unstable:
        row["unstable"] = True
    return row


class HFCompiled:
    """The static cache + torch.compile recipe on ``model``, undone on exit (the model's own
    forward, generation config and compile state come back)."""

    def __init__(self, model, how: str) -> None:
        self.model, self.how, self.notes = model, how, {}

    def __enter__(self):
        m = self.model
        self.saved = copy.deepcopy(m.generation_config)
        m.generation_config.cache_implementation = "static"
        # Inductor's static CUDA launcher segfaults while recording the decode step's CUDA graph
        # (torch 2.11 on the lent H100, 2026-12-08: static_triton_launcher.run, in cudagraphify);
        # the default launcher runs the same kernels
        import torch._inductor.config as inductor_config

        self.launcher = getattr(inductor_config, "use_static_cuda_launcher", None)
        if self.launcher:
            inductor_config.use_static_cuda_launcher = False
            self.notes["inductor_static_cuda_launcher"] = "off (it segfaults in CUDA-graph recording here)"
        if self.how == "forward":
            compiled = torch.compile(m.forward, mode="reduce-overhead", fullgraph=True)

            def forward(*args, **kwargs):
                # each call is a new CUDA-graph step: the static cache's in-place update reads the
                # previous replay's outputs otherwise (what torch's error asks for)
                torch.compiler.cudagraph_mark_step_begin()
                return compiled(*args, **kwargs)

            m.forward = forward
            if hasattr(m.generation_config, "disable_compile"):  # generate would compile __call__ again around it
                m.generation_config.disable_compile = True
                self.notes["hf_auto_compile"] = "disabled (model.forward compiled by hand)"
            else:
                self.notes["hf_auto_compile"] = "generation_config has no disable_compile"
        else:
            from transformers import CompileConfig

            m.generation_config.compile_config = CompileConfig(fullgraph=True, mode="reduce-overhead")
            self.notes["hf_auto_compile"] = "generate's own compile: CompileConfig(fullgraph=True, mode='reduce-overhead')"
        return self

    def __exit__(self, *exc):
        m = self.model
        for key in ("forward", "_compiled_call", "_last_compile_config", "_previous_max_cache_length", "_cache"):
            m.__dict__.pop(key, None)
        m.generation_config = self.saved
        torch._dynamo.reset()
        if self.launcher:
            import torch._inductor.config as inductor_config

            inductor_config.use_static_cuda_launcher = self.launcher
        return False


def hf_row(model, ids, new, clock, repeats, compiled: str | None) -> tuple[dict, torch.Tensor]:
    """hf_eager (compiled None) or the compile recipe ('forward' / 'auto')."""
    if compiled is None:
        hf_generate(model, ids, new)  # warm
        hf_generate(model, ids, 1)
        row, out = hf_timings(model, ids, new, clock, repeats)
        return row, out
    with HFCompiled(model, compiled) as rec:
        _, first = seconds(clock, lambda: hf_generate(model, ids, new))
        _, second = seconds(clock, lambda: hf_generate(model, ids, new))
        hf_generate(model, ids, 1)  # warm the prefill-only call (the same static cache size)
        row, out = hf_timings(model, ids, new, clock, repeats)
        row.update(compile_s=first, second_generate_s=second, recipe=compiled, **rec.notes)
    return row, out


def tcomp_row(model, ids, new, clock, repeats, target, passes, verify, kv_cache="model") -> tuple[dict, Any]:
    import tcomp

    b, p = ids.shape
    fast, compile_s = seconds(clock, lambda: tcomp.optimize(
        model, {"input_ids": ids}, target=target, passes=passes, verify=verify, max_len=p + new, max_batch=b,
        kv_cache=kv_cache,
    ))  # fmt: skip
    runner = fast.tcomp_decoder
    _, first = seconds(clock, lambda: tcomp.generate(fast, ids, max_new_tokens=new, eos_token_id=[]))
    tcomp.generate(fast, ids, max_new_tokens=new, eos_token_id=[])  # warm (the decode CUDA graph is captured by now)
    runs = []
    for _ in range(repeats):
        logits, pre_ms = clock(lambda: runner.step(ids, start=0))
        tok = logits[:, -1:].argmax(-1)

        def loop(tok=tok):
            for i in range(new - 1):
                tok = runner.step(tok, start=p + i)[:, -1:].argmax(-1)
            return tok

        _, dec_ms = clock(loop)
        out, gen_ms = clock(lambda: tcomp.generate(fast, ids, max_new_tokens=new, eos_token_id=[]))
        _, gen1_ms = clock(lambda: tcomp.generate(fast, ids, max_new_tokens=1))  # the HF rows' prefill measure
        runs.append({"prefill_ms": pre_ms, "step_ms": dec_ms / (new - 1), "decode_ms": dec_ms, "generate_ms": gen_ms,
                     "generate_1_token_ms": gen1_ms})  # fmt: skip
    row = summarize(runs, b, new)
    row["prefill_via_generate_1_token_ms"] = min(r["generate_1_token_ms"] for r in runs)
    row.update(compile_s=compile_s, first_generate_s=first, cudagraphs=runner.cudagraphs,
               passes={"prefill": _passes(runner.report), "decode": _passes(runner.decode_report)})  # fmt: skip
    row["sites"] = _sites(runner.decode_report)
    row.update(graph_weight_bytes(runner.decode_module, b))
    return row, (fast, out)


def _passes(report) -> dict[str, str]:
    return {r.name: r.status for r in getattr(report, "passes", [])}


def _sites(report) -> dict[str, int]:
    """Sites per status of every pass in the decode graph's report (how many linears were quantized)."""
    counts: dict[str, int] = {}
    for rec in getattr(report, "passes", []):
        for site in getattr(rec, "sites", None) or []:
            status = site.get("status", "?") if isinstance(site, dict) else "?"
            counts[f"{rec.name}:{status}"] = counts.get(f"{rec.name}:{status}", 0) + 1
    return counts


def torchao_configs(kind: str):
    """torchao's weight-only config for ``kind`` ('int8' or 'int4_g128'); raises when torchao is absent."""
    import torchao  # noqa: F401 - the reason a row is skipped when absent
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig

    if kind == "int8":
        return Int8WeightOnlyConfig(), "Int8WeightOnlyConfig()"
    try:  # torch's own int4 kernel (_weight_int4pack_mm); the default packing needs the mslk package
        return Int4WeightOnlyConfig(group_size=GROUP, int4_packing_format="tile_packed_to_4d"), (
            f"Int4WeightOnlyConfig(group_size={GROUP}, int4_packing_format='tile_packed_to_4d')"
        )
    except TypeError:  # an older torchao without packing formats
        return Int4WeightOnlyConfig(group_size=GROUP), f"Int4WeightOnlyConfig(group_size={GROUP})"


# ---------------------------------------------------------------------- the run


class Run:
    def __init__(self, args, device: torch.device) -> None:
        self.args, self.device = args, device
        self.clock = Clock(device)
        self.rows: list[dict] = []
        self.meta: dict[str, Any] = {}
        self.out = args.out_path
        if args.append and self.out.exists():
            old = json.loads(self.out.read_text())
            self.rows = [dict(r, earlier_run=r.get("earlier_run", old.get("date"))) for r in old.get("rows", [])]

    def add(self, row: dict) -> None:
        key = (row["model"], row["batch"], row["row"])
        self.rows = sorted([r for r in self.rows if (r["model"], r["batch"], r["row"]) != key] + [row], key=order)
        ratios(self.rows)
        write_results(self.out, "generate", self.rows, **self.meta)

    def free(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def mem(self) -> dict[str, float]:
        if self.device.type != "cuda":
            return {}
        peak = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
        return {"peak_gpu_GiB": peak}


def order(row: dict) -> tuple:
    """Rows by model, batch, then the order of ROWS (hf_compile runs last but is listed second)."""
    models = list(MODELS)
    return (models.index(row["model"]) if row["model"] in models else len(models), row["batch"],
            ROWS.index(row["row"]) if row["row"] in ROWS else len(ROWS))  # fmt: skip


def ratios(rows: list[dict]) -> None:
    """speedup_vs_hf_compile / _vs_hf_eager (decode step, end to end) within each (model, batch);
    none for an unstable row or baseline, or one that did not run."""
    by = {(r["model"], r["batch"], r["row"]): r for r in rows}
    for r in rows:
        if "step_ms" not in r:
            continue
        for base_name in (BASELINE, "hf_eager"):
            base = by.get((r["model"], r["batch"], base_name))
            tag = base_name.removeprefix("hf_")
            r[f"speedup_vs_hf_{tag}"] = r[f"e2e_speedup_vs_hf_{tag}"] = None
            if base is None or "step_ms" not in base:
                r[f"no_ratio_vs_hf_{tag}"] = "baseline not measured"
            elif r.get("unstable") or base.get("unstable"):
                r[f"no_ratio_vs_hf_{tag}"] = "unstable timings" + (" (baseline)" if base.get("unstable") else "")
            else:
                r[f"speedup_vs_hf_{tag}"] = base["step_ms"] / r["step_ms"]
                r[f"e2e_speedup_vs_hf_{tag}"] = r["e2e_tokens_per_s"] / base["e2e_tokens_per_s"]
                r.pop(f"no_ratio_vs_hf_{tag}", None)


def add_floor(row: dict, cfg: dict, batch: int, prompt: int, new: int, ceil: dict) -> None:
    avg_len = prompt + new / 2  # step i (0..new-2) reads prompt + i + 1 slots
    kv = kv_bytes_read(cfg, batch, avg_len, int8=row.get("kv_cache") == "int8")
    moved = row["weight_bytes_read"] + kv
    floor_ms = moved / (ceil["copy_GBps"] * 1e6)
    row.update(kv_bytes_read_avg=kv, bytes_per_step=moved, floor_ms=floor_ms, copy_GBps=ceil["copy_GBps"],
               fraction_of_floor=floor_ms / row["step_ms"] if row.get("step_ms") else None,
               prefill_compute_floor_ms=prefill_flops(cfg, batch, prompt) / (ceil["matmul_bf16_TFLOPs"] * 1e9))  # fmt: skip


def run_model(run: Run, name: str, cfg: dict, target: str | None) -> None:
    args, device = run.args, run.device
    prompt, new = args.prompt, args.new
    notes: dict[str, Any] = {}
    model = build_model(cfg, device, args.seed, notes)
    total = checksum(model)
    run.meta.setdefault("models", {})[name] = {"config": {k: v for k, v in cfg.items()}, "notes": notes,
                                              "weight_checksum": total}  # fmt: skip
    state: dict[int, dict] = {}  # batch -> prompt, reference tokens and logits
    for batch in args.batch_list:
        gen = torch.Generator(device="cpu").manual_seed(args.seed + batch)
        ids = torch.randint(0, cfg["vocab_size"], (batch, prompt), generator=gen).to(device)
        base = {"model": name, "batch": batch, "prompt_len": prompt, "new_tokens": new}
        with torch.no_grad():
            ref_tokens = hf_generate(model, ids, new)  # the reference tokens (hf_eager, untimed)
            ref_logits = hf_forced_logits(model, ids, ref_tokens[:, prompt:], min(LOGIT_STEPS, new))
        st = state[batch] = {"ids": ids, "ref_tokens": ref_tokens, "ref_logits": ref_logits, "exact": None}
        run.mem()
        for row_name in [r for r in ROWS if r in args.row_list and not r.startswith("torchao")]:
            if row_name == "hf_compile":
                continue  # run last for this batch (its CUDA-graph pools and dynamo state are cleared after)
            one_row(run, row_name, model, cfg, base, st, target)
            run.free()
        if BASELINE in args.row_list:
            one_row(run, BASELINE, model, cfg, base, st, target)
            run.free()
    del model
    run.free()
    for kind in ("int8", "int4_g128"):
        row_name = f"torchao_{kind}"
        if row_name not in args.row_list:
            continue
        try:
            config, spelled = torchao_configs(kind)
        except Exception as exc:  # noqa: BLE001 - torchao absent or too old: the row says so
            for batch in args.batch_list:
                run.add({"model": name, "batch": batch, "row": row_name,
                         "skipped": f"torchao not installed: {err_text(exc)}"})  # fmt: skip
            continue
        model = None
        try:
            from torchao.quantization import quantize_

            model = build_model(cfg, device, args.seed, {})
            same = checksum(model) == total
            quantize_(model, config)
        except Exception as exc:  # noqa: BLE001
            for batch in args.batch_list:
                run.add({"model": name, "batch": batch, "row": row_name, "error": f"quantize_: {err_text(exc)}",
                         "torchao_config": spelled})  # fmt: skip
            model = None
            run.free()
            continue
        for batch in args.batch_list:
            base = {"model": name, "batch": batch, "prompt_len": prompt, "new_tokens": new}
            one_row(run, row_name, model, cfg, base, state[batch], target,
                    extra={"torchao_config": spelled, "rebuilt_weights_identical": same})  # fmt: skip
            run.free()
        model = None
        run.free()
    state.clear()
    run.free()


def one_row(run: Run, row_name: str, model, cfg, base: dict, st: dict, target, extra: dict | None = None) -> None:
    args, device, clock = run.args, run.device, run.clock
    prompt, new, repeats = args.prompt, args.new, args.repeats
    ids, batch = st["ids"], base["batch"]
    row: dict[str, Any] = dict(base, row=row_name, **(extra or {}))
    steps = min(LOGIT_STEPS, new)
    print(f"[{base['model']} b={batch}] {row_name} ...", flush=True)
    obj = None
    try:
        with torch.no_grad():
            if row_name in ("hf_eager", "hf_compile") or row_name.startswith("torchao"):
                compiled = None if row_name == "hf_eager" else args.hf_compile
                if compiled is not None and device.type != "cuda" and not args.cpu_compile:
                    row["skipped"] = "torch.compile(mode='reduce-overhead') row needs CUDA (--cpu-compile runs it anyway)"
                    run.add(row)
                    return
                res, out = hf_row(model, ids, new, clock, repeats, compiled)
                row.update(res)
                row.update(agreement(out, st["ref_tokens"], prompt))
                row.update(model_weight_bytes(model, batch))
                if row_name.startswith("torchao"):  # quantized: logits against tcomp_exact's (else hf_eager's)
                    ref = st["exact"] if st["exact"] is not None else st["ref_logits"]
                    mine = hf_forced_logits(model, ids, st["ref_tokens"][:, prompt:], steps)
                    row.update(logit_errors(mine, ref), logits_vs="tcomp_exact" if st["exact"] is not None else "hf_eager")
            else:
                spec = tcomp_passes(row_name, args.quant_all_linears)
                if isinstance(spec, str):
                    row["skipped"] = spec
                    run.add(row)
                    return
                row["passes_requested"] = [s if isinstance(s, str) else list(s) for s in spec]
                kv = "int8" if row_name == "tcomp_kv_int8" else "model"
                res, (obj, out) = tcomp_row(model, ids, new, clock, repeats, target, spec, args.verify, kv)
                row.update(res, target=target, verify=args.verify, kv_cache=kv)
                row.update(agreement(out, st["ref_tokens"], prompt))
                runner = obj.tcomp_decoder
                mine = tcomp_forced_logits(runner, ids, st["ref_tokens"][:, prompt:], steps)
                if row_name == "tcomp_exact":
                    st["exact"] = mine
                    st["exact_tokens"] = out
                    row.update(logit_errors(mine, st["ref_logits"]), logits_vs="hf_eager")
                    row.update(hf_face_timing(obj, ids, new, clock, out))
                else:
                    ref = st["exact"] if st["exact"] is not None else st["ref_logits"]
                    row.update(logit_errors(mine, ref), logits_vs="tcomp_exact" if st["exact"] is not None else "hf_eager")
                    if st.get("exact_tokens") is not None:
                        row["greedy_agreement_vs_tcomp_exact"] = agreement(out, st["exact_tokens"], prompt)["greedy_agreement"]
            if "step_ms" in row:
                add_floor(row, cfg, batch, prompt, new, run.meta["ceilings"])
    except Exception as exc:  # noqa: BLE001 - one row failing (OOM, a compile error) leaves the others
        row["error"] = err_text(exc)
        row["traceback"] = traceback.format_exc().splitlines()[-12:]
        print(f"  {row_name} failed: {row['error']}", flush=True)
    finally:
        obj = runner = mine = res = out = None  # noqa: F841 - dropped before the caller frees memory
    row.update(run.mem())
    run.add(row)
    if "step_ms" in row:
        print(f"  step {row['step_ms']:.3f} ms, prefill {row['prefill_ms']:.1f} ms, "
              f"{row['decode_tokens_per_s'] or 0:.0f} tok/s, {row.get('fraction_of_floor') or 0:.0%} of floor"
              f"{'  UNSTABLE' if row.get('unstable') else ''}", flush=True)  # fmt: skip


def hf_face_timing(fast, ids, new, clock, tcomp_tokens) -> dict[str, Any]:
    """The optimized decoder under Hugging Face's own generate() (its loop, tcomp's graphs)."""
    try:
        hf_generate(fast, ids, new)
        out, ms = clock(lambda: hf_generate(fast, ids, new))
        same = out.shape == tcomp_tokens.shape and bool(torch.equal(out, tcomp_tokens))
        return {"hf_face_generate_ms": ms, "hf_face_tokens_equal_tcomp_generate": same}
    except Exception as exc:  # noqa: BLE001 - recorded, not fatal
        return {"hf_face_error": err_text(exc)}


FP8_WEIGHT_ONLY = ("quantize.fp8_weight", "quantize.fp8_weight_only", "quantize.fp8wo")


def tcomp_passes(row_name: str, all_linears: bool) -> list | str:
    """The passes= of a tcomp row, or why it does not run (a string)."""
    import tcomp
    from tcomp.pipeline import default_pipeline

    registered = tcomp.registered_passes()
    default = list(default_pipeline())
    sel = {"skip_first_last": False} if all_linears else {}
    if row_name in ("tcomp_exact", "tcomp_kv_int8"):
        return default
    if row_name == "tcomp_int8":
        return default + [("quantize.int8_weight", dict(sel))]
    if row_name == "tcomp_int4_g128":
        return default + [("quantize.int4_weight", dict(sel, group=GROUP))]
    if row_name == "tcomp_fp8_wo":
        for name in FP8_WEIGHT_ONLY:
            if name in registered:
                return default + [(name, dict(sel))]
        return ("no pass: tcomp has no fp8 weight-only pass (quantize.fp8 also quantizes activations to e4m3: "
                "row tcomp_fp8_w8a8)")  # fmt: skip
    if row_name == "tcomp_fp8_w8a8":
        if "quantize.fp8" not in registered:
            return "no pass: quantize.fp8 is not registered"
        return default + [("quantize.fp8", dict(sel))]
    raise ValueError(row_name)


def device_slug(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name().lower().replace(" ", "-")
    return "cpu"


def target_of(device: torch.device, override: str | None) -> str:
    if override:
        return override
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name()
    for t in ("h200", "h100"):
        if t in name.lower():
            return t
    raise SystemExit(f"bench/generate.py: no tcomp target for {name!r}; pass --target (h100, h200, a100, ...)")


def table(rows: list[dict]) -> None:
    header = ["model", "b", "row", "step ms", "tok/s", "e2e tok/s", "prefill ms", "vs compile", "e2e vs compile",
              "vs eager", "of floor", "agree", "logit err", "compile s", "note"]  # fmt: skip

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    body = []
    for r in rows:
        note = r.get("skipped") or r.get("error") or ("UNSTABLE" if r.get("unstable") else "")
        body.append([
            r["model"], str(r["batch"]), r["row"], f(r.get("step_ms"), ".3f"), f(r.get("decode_tokens_per_s"), ".0f"),
            f(r.get("e2e_tokens_per_s"), ".0f"), f(r.get("prefill_ms"), ".1f"), f(r.get("speedup_vs_hf_compile"), ".2f"),
            f(r.get("e2e_speedup_vs_hf_compile"), ".2f"), f(r.get("speedup_vs_hf_eager"), ".2f"), f(r.get("fraction_of_floor"), ".0%"),
            f(r.get("greedy_agreement"), ".3f"), f(r.get("logit_rel_err_max"), ".1e"), f(r.get("compile_s"), ".1f"),
            str(note)[:48],
        ])  # fmt: skip
    try:
        from rich.console import Console
        from rich.table import Table

        t = Table(title="generation: decode step vs HF static cache + torch.compile")
        for h in header:
            t.add_column(h, justify="left" if h in ("model", "row", "note") else "right")
        for line in body:
            t.add_row(*line)
        Console(width=200).print(t)
    except ImportError:
        widths = [max(len(h), *(len(line[i]) for line in body)) for i, h in enumerate(header)]
        for line in [header, *body]:
            print("  ".join(c.ljust(w) for c, w in zip(line, widths)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="8b,1b", help="comma-separated: 8b, 1b")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of: {', '.join(ROWS)}")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2, help="timings per row (more than 10%% apart: unstable)")
    ap.add_argument("--target", default=None, help="tcomp target (default: from the device name)")
    ap.add_argument("--verify", action="store_true", help="tcomp.optimize(verify=True): float64 CPU references "
                    "(an 8B model in float64 needs 64 GB of host memory and minutes)")  # fmt: skip
    ap.add_argument("--hf-compile", default="forward", choices=["forward", "auto"],
                    help="forward: torch.compile(model.forward) by hand (generate's own compile off); "
                    "auto: generate's compile_config")  # fmt: skip
    ap.add_argument("--quant-all-linears", action="store_true", help="quantize the first and last linears too")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep-caches", action="store_true",
                    help="use the usual Triton / Inductor / tcomp caches (default: fresh ones, so compile times are cold)")  # fmt: skip
    ap.add_argument("--smoke", action="store_true", help="CPU check: tiny configs, 16-token prompt, 8 new tokens")
    ap.add_argument("--cpu-compile", action="store_true", help="run the torch.compile rows on the CPU too")
    ap.add_argument("--append", action="store_true", help="keep the rows of an existing --out (re-measured ones replaced)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--suffix", default="", help="appended to the results file name")
    args = ap.parse_args()
    args.batch_list = [int(b) for b in args.batches.split(",")]
    args.row_list = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = sorted(set(args.row_list) - set(ROWS))
    if unknown:
        ap.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if set(models) - set(MODELS):
        ap.error(f"unknown models {sorted(set(models) - set(MODELS))}; choose from {', '.join(MODELS)}")
    if args.smoke:
        if "--prompt" not in sys.argv:
            args.prompt = 16
        if "--new" not in sys.argv:
            args.new = 8
        if "--batches" not in sys.argv:
            args.batch_list = [1, 2]
    if args.new < 2:
        ap.error("--new must be at least 2 (a decode step is timed as generate(new) - generate(1))")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        raise SystemExit("bench/generate.py needs a CUDA GPU (or --smoke for the CPU check)")
    slug = device_slug(device)
    default_out = Path(__file__).resolve().parent / "results" / f"generate-{slug}{args.suffix}.json"
    if args.smoke and args.out is None:
        default_out = Path(tempfile.gettempdir()) / f"generate-smoke-{slug}{args.suffix}.json"
    args.out_path = Path(args.out) if args.out else default_out
    if not args.keep_caches:
        fresh = tempfile.mkdtemp(prefix="tcomp-bench-generate-")
        for var, sub in (("TRITON_CACHE_DIR", "triton"), ("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("TCOMP_CACHE_DIR", "tcomp")):
            os.environ[var] = os.path.join(fresh, sub)
    logging.disable(logging.WARNING)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
    except Exception:  # noqa: BLE001 - only quiets warnings
        pass
    target = target_of(device, args.target)
    torch.manual_seed(args.seed)
    run = Run(args, device)
    run.meta.update(
        args={k: v for k, v in vars(args).items() if k not in ("out_path",)}, target=target, smoke=args.smoke,
        caches="fresh (Triton, Inductor, tcomp in a new temp dir)" if not args.keep_caches else "kept",
        method={
            "hf_step": "(generate new - generate 1) / (new - 1), CUDA events around each generate",
            "tcomp_step": "runner.step timed directly: prefill, then new-1 greedy steps (argmax included)",
            "timings": f"{args.repeats} per row after warm-up; the min is reported; > {UNSTABLE:.0%} apart: unstable, no ratio",
            "floor": "(weight bytes read per step + KV bytes at the average filled length) / measured copy bandwidth",
            "logits": f"first {LOGIT_STEPS} steps teacher-forced with hf_eager's tokens; exact rows vs hf_eager, "
                      "quantized vs tcomp_exact",
        },
    )  # fmt: skip
    with torch.no_grad():
        run.meta["ceilings"] = ceilings(device, run.clock, args.smoke)
    print(f"device {slug}, target {target}: copy {run.meta['ceilings']['copy_GBps']:.0f} GB/s, "
          f"bf16 matmul {run.meta['ceilings']['matmul_bf16_TFLOPs']:.1f} TFLOP/s", flush=True)  # fmt: skip
    for name in models:
        cfg = (SMOKE if args.smoke else MODELS)[name]
        try:
            run_model(run, name, cfg, target)
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory building the model: the next one runs
            run.add({"model": name, "batch": 0, "row": "build", "error": err_text(exc),
                     "traceback": traceback.format_exc().splitlines()[-12:]})  # fmt: skip
        run.free()
    table(run.rows)
    write_results(run.out, "generate", run.rows, **run.meta)


if __name__ == "__main__":
    main()
