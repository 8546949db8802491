"""``tcomp.optimize`` for decoders: capture the prefill and decode graphs, run the plan on both,
verify each against its own float64 reference, and return a module that generates."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from tcomp import kv_cache as kv
from tcomp.decoder import (
    _device,
    build_references,
    capture_decode,
    capture_decoder,
    fit_ids,
    is_hf,
    step_inputs,
)
from tcomp.errors import InputError, PassError
from tcomp.graph import drop_unused_tensors
from tcomp.input_check import learned_positions
from tcomp.outcome import enforce, enforce_strict
from tcomp.pipeline import run_pipeline
from tcomp.report import Report

DEFAULT_MAX_LEN = 2048


def _example_ids(args: tuple, kwargs: dict) -> torch.Tensor:
    ids = kwargs.get("input_ids", args[0] if args else None)
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point():
        raise InputError(
            "a decoder is optimized from example token ids: pass {'input_ids': ids} or (ids,) with ids a "
            "(batch, tokens) integer tensor"
        )
    return ids


def _config(model: torch.nn.Module) -> Any:
    """The model's configuration object: Hugging Face's ``config``, the zoo's ``cfg``, or None."""
    return getattr(model, "config", None) or getattr(model, "cfg", None)


def _default_max_len(model: torch.nn.Module) -> int:
    config = _config(model)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "max_len", None)
    return int(min(limit, DEFAULT_MAX_LEN)) if limit else DEFAULT_MAX_LEN


def _step_calibration(calibration: Any, batch: int, max_len: int, device, decode: bool) -> list | None:
    """The user's calibration batches as step inputs: whole prompts for the prefill graph; for the
    decode graph the same prompts one token at a time at consecutive positions (so the cache the
    calibration copy fills is the one a real decode step would read)."""
    if calibration is None:
        return None
    from tcomp.calibration import batches

    out = []
    for args, kwargs in batches(calibration):
        ids = _example_ids(args, kwargs)
        ids = fit_ids(ids, batch, ids.shape[1])
        n = min(ids.shape[1], max_len)
        if decode:
            out += [step_inputs(batch, 1, t, max_len, ids[:, t : t + 1], device) for t in range(n)]
        else:
            out.append(step_inputs(batch, max(n, 2), 0, max_len, ids[:, : max(n, 2)], device))
    return out


def optimize_decoder(
    model: torch.nn.Module,
    args: tuple,
    kwargs: dict,
    plan: Any,
    *,
    verify: bool,
    verify_samples: int,
    cudagraphs: bool | None,
    progress: Callable[[str], None] | None,
    max_len: int | None,
    max_batch: int | None,
    kv_cache: str = "model",
    batch_buckets: tuple[int, ...] | None = None,
    on_failure: str = "raise",
    asked: tuple[str, ...] | list[str] = (),
    strict: bool = False,
):
    from tcomp.api import CapturedGraph, _add_cost, _sites
    from tcomp.generation import OptimizedDecoder

    step_fn = progress or (lambda _name: None)
    ids = _example_ids(args, kwargs)
    batch = int(max_batch or ids.shape[0])
    max_len = int(max_len or _default_max_len(model))
    if max_len < 2:
        raise InputError(f"max_len must be at least 2 slots, got {max_len}")
    table = learned_positions(model)  # the same table the compiled module's input checks read
    if table is not None and max_len > table[1]:
        raise InputError(
            f"max_len={max_len} is past the {table[1]} positions {type(model).__name__} learned ({table[0]}): a "
            f"sequence longer than that has no position embedding. Pass max_len={table[1]} or less"
        )
    kv.check_format(kv_cache)  # before the capture's work
    buckets = sorted(set(batch_buckets or ()))
    if any(not isinstance(bb, int) or isinstance(bb, bool) or not 1 <= bb < batch for bb in buckets):
        raise InputError(
            f"batch_buckets={list(batch_buckets or ())}: each is a batch size from 1 to {batch - 1}, below the "
            f"max_batch={batch} the cache is built for (that one always has its graph)"
        )
    step_fn("capture")
    captured = capture_decoder(model, ids, batch=batch, max_len=max_len, kv_format=kv_cache)
    device = _device(captured.step)
    refs: tuple = (None, None)
    if verify:
        step_fn("float64 reference")
        refs = _references(captured.step, ids, batch, max_len, verify_samples, plan.seed, model)

    def run_graph(label: str, cap, reference, rows: int, decode: bool):
        """The plan on one step graph (its calibration as step inputs, verified against
        ``reference``), then its report: (pipeline result, Report)."""
        cal = _step_calibration(plan.calibration, rows, max_len, device, decode)
        result = run_pipeline(
            cap.gm, dataclasses.replace(plan, calibration=cal), reference=reference,
            progress=None if progress is None else (lambda s: progress(f"{label}: {s}")),
        )  # fmt: skip
        drop_unused_tensors(result.gm)
        report = Report(model=f"{type(model).__name__} ({label})", target=plan.target.name, passes=result.records,
                        dynamic_dims=cap.dims)  # fmt: skip
        report.sites = _sites(result.gm)
        if reference is not None:
            report.base_error, report.final_error = reference.base_error, result.final_error
        _add_cost(report, result.gm, plan.target)
        return result, report

    results, reports, before = [], [], {}
    for name, cap, reference in (("prefill", captured.prefill, refs[0]), ("decode", captured.decode, refs[1])):
        result, report = run_graph(name, cap, reference, batch, name == "decode")
        results.append(result)
        reports.append(report)
        before[name] = CapturedGraph(copy.deepcopy(cap.gm.graph))  # what report.html and save compare
    bucket_graphs, bucket_reports = {}, {}
    for bb in buckets:  # a decode graph per smaller batch, over the first bb rows of the same cache
        step_fn(f"decode graph for batch {bb}")
        bstep, cap = capture_decode(model, ids, batch=bb, max_len=max_len, kv_format=kv_cache)
        reference = _references(bstep, ids, bb, max_len, verify_samples, plan.seed, model)[1] if verify else None
        result, bucket_reports[bb] = run_graph(f"decode, batch {bb}", cap, reference, bb, True)
        bucket_graphs[bb] = result.gm
    graphs = {"prefill": reports[0].passes, "decode": reports[1].passes}
    graphs.update({f"decode, batch {b}": r.passes for b, r in bucket_reports.items()})
    enforce(asked, graphs, on_failure)
    enforce_strict(graphs, strict)
    _check_one_cache({"prefill": results[0].gm, "decode": results[1].gm, **{f"decode, batch {b}": g for b, g in
                      bucket_graphs.items()}}, [*reports, *bucket_reports.values()])  # fmt: skip
    use_graphs = plan.target.kind == "gpu" if cudagraphs is None else cudagraphs
    runner = OptimizedDecoder(
        results[0].gm, results[1].gm, batch=batch, max_len=max_len, n_layers=len(captured.step.layers),
        report=reports[0], decode_report=reports[1], target=plan.target, model_name=type(model).__name__,
        cudagraphs=use_graphs, decode_buckets=bucket_graphs,
    )  # fmt: skip
    runner.bucket_reports = bucket_reports
    runner.plan = dataclasses.replace(plan, calibration=None)
    generation_config = getattr(model, "generation_config", None)
    runner.eos_token_id = getattr(generation_config, "eos_token_id", None)
    runner.pad_token_id = getattr(generation_config, "pad_token_id", None)
    runner.graphs_before = before  # per graph: the captured graph's structure, and its code
    runner.captured_code = {name: r.snapshots[0][1] for name, r in zip(before, results)}
    if is_hf(model):
        from tcomp.hf_face import hf_decoder

        return hf_decoder(model, runner)
    return runner


def _check_one_cache(graphs: dict[str, torch.nn.Module], reports: list) -> None:
    """Every step graph must read and write the same cache buffers: a layer that keeps a recurrent
    state in one graph (``attention.linear``) and a KV cache in another would generate from a state
    nobody filled. Raised with each graph's pass outcomes when they differ."""
    layouts = {name: sorted(n for n, _ in g.named_buffers() if kv.is_buffer_name(n)) for name, g in graphs.items()}
    first = next(iter(layouts.values()))
    if all(names == first for names in layouts.values()):
        return
    outcomes = "; ".join(
        f"{name}: " + ", ".join(f"{r.name} {r.status}" + (f" ({r.reason})" if r.reason else "") for r in rep.passes)
        for name, rep in zip(graphs, reports)
    )
    states = {name: sorted({n.rsplit("_", 1)[1] for n in names if kv.is_state_name(n)}) for name, names in layouts.items()}
    raise PassError(
        "the step graphs came out with different caches -- layers with a recurrent state per graph: "
        + ", ".join(f"{name} {v or 'none'}" for name, v in states.items())
        + f". A rewrite that replaces the KV cache must hold in every graph ({outcomes}). Loosen that pass's "
        "tolerance, keep the failing layers (keep=[...]) or drop the pass"
    )


REACH = 64  # how many tokens past the example's length the fresh reference prompts may go


def _references(step, ids, batch, max_len, samples, seed, model):
    """The example prompt and ``samples - 1`` (at least one) fresh ones of other lengths: the
    first fresh prompt as long as the reference reaches (``REACH`` tokens past the example's, within
    the cache), the others uniform in 2 .. that length. So both graphs are checked at more than one
    length: the dynamic prefill, and decode at more than one cache position (a kernel that splits
    the cache in chunks is wrong past the first chunk, not before)."""
    gen = torch.Generator().manual_seed(seed)
    vocab = _vocab(model, ids)
    n = max(2, min(ids.shape[1], max_len - 1))
    longest = max(n, min(max_len - 1, n + REACH))
    prompts = [fit_ids(ids.cpu(), batch, n)]
    for i in range(max(1, samples - 1)):
        length = longest if i == 0 else int(torch.randint(2, longest + 1, (1,), generator=gen))
        prompts.append(torch.randint(0, vocab, (batch, length), generator=gen))
    nxt = torch.randint(0, vocab, (batch, len(prompts)), generator=gen)
    return build_references(step, prompts, nxt, seed=seed)


def _vocab(model: torch.nn.Module, ids: torch.Tensor) -> int:
    v = getattr(_config(model), "vocab_size", None)
    return int(v) if v else int(ids.max()) + 1
