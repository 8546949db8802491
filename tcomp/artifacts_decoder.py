"""Decoder artifact folders: what ``OptimizedDecoder.save(DIR)`` writes and ``tcomp.load(DIR)`` reads.

A decoder compiled for generation is two graphs over one KV cache (and a decode graph per batch
bucket, ``decode_b{rows}/``, over the first rows of that cache; ``manifest["buckets"]``). Its folder
holds every graph, each in a subfolder with the files of a single-graph artifact (``prefill/`` and ``decode/``:
``runner.py``, ``graph_before.txt`` / ``graph_after.txt``, ``report.json`` / ``.txt`` / ``.html``,
``kernels/``), and at the top:

* ``weights.safetensors``: every tensor either runner needs, each stored once -- a weight both
  graphs hold (``generation.share_tensors``) or one graph holds under two names (tied embeddings)
  is one entry. ``manifest["graphs"][g]["tensors"]`` maps each graph's tensor names to entries.
  The KV cache is not stored: it is allocated (zeros) at load from the shapes and dtypes in
  ``manifest["cache"]``, once, and given to both graphs;
* ``plan.json``: the plan that ran on both graphs (``Plan.to_json()``);
* ``manifest.json`` (format ``tcomp-decoder/1``): batch, max_len, n_layers, the cache, each graph's
  passes and tree specs, the model's eos and pad ids (``generation``: ``tcomp.generate``'s
  defaults), versions and the sha256 of every file.

``tcomp.load`` checks every hash and returns an ``OptimizedDecoder`` built from the two generated
``Program`` modules: ``tcomp.generate(loaded, ids)`` runs without the model's code (the runners
import only torch and tcomp).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from safetensors.torch import load_file, save_file

from tcomp import kv_cache
from tcomp.artifacts import (
    _dedup,
    import_runner,
    pass_entries,
    staging,
    write_graph,
    write_manifest,
    write_plan,
)
from tcomp.errors import InputError
from tcomp.runner import specs_of, tensors_of

FORMAT = "tcomp-decoder/1"
GRAPHS = ("prefill", "decode")


def write_decoder(decoder: Any, folder: str | Path) -> Path:
    """Write the artifact folder of an ``OptimizedDecoder`` (see the module doc); returns the
    manifest path. Written to a temporary folder and moved into place, as ``artifacts.write``."""
    buckets = sorted(int(b) for b in getattr(decoder, "decode_buckets", {}))
    graph_names = (*GRAPHS, *(bucket_graph(b) for b in buckets))
    modules = {"prefill": decoder.prefill_module, "decode": decoder.decode_module}
    modules.update({bucket_graph(b): decoder.decode_buckets[str(b)] for b in buckets})
    for name, gm in modules.items():
        if not isinstance(gm, fx.GraphModule):
            raise InputError(
                f"this decoder's {name} graph is a {type(gm).__name__}, not the fx graph tcomp.optimize "
                "returns (a decoder loaded from an artifact folder): copy that folder instead of saving it again"
            )
    reports = {"prefill": decoder.report, "decode": decoder.decode_report}
    reports.update({bucket_graph(b): decoder.bucket_reports[b] for b in buckets})
    before = getattr(decoder, "graphs_before", None) or {}
    captured = getattr(decoder, "captured_code", None) or {}
    folder = Path(folder)
    with staging(folder) as tmp:
        names = {
            g: write_graph(
                tmp / g, modules[g], reports[g], target=decoder.target, graph_before=before.get(g),
                captured_code=captured.get(g, ""),
            )  # fmt: skip
            for g in graph_names
        }
        cache_names = {n for i in range(decoder.n_layers) for n in kv_cache.all_names(i)}
        stored, keys, cache = _tensor_table(
            {g: tensors_of(modules[g], names[g]) for g in graph_names}, cache_names
        )
        save_file(_dedup(stored), str(tmp / "weights.safetensors"))
        write_plan(tmp, getattr(decoder, "plan", None))
        graphs = {}
        for g in graph_names:
            in_spec, out_spec = specs_of(modules[g])
            graphs[g] = {
                "passes": pass_entries(reports[g]),
                "attention_sites": len(reports[g].sites),
                "in_spec": in_spec,
                "out_spec": out_spec,
                "tensors": keys[g],
                "cache": sorted(n for n in names[g] if n in cache_names),
            }
        write_manifest(tmp, {
            "format": FORMAT,
            "model": reports["prefill"].model.removesuffix(" (prefill)"),
            "target": reports["prefill"].target,
            "batch": decoder.batch,
            "max_len": decoder.max_len,
            "n_layers": decoder.n_layers,
            "buckets": buckets,
            "cache": cache,
            "graphs": graphs,
            "generation": {"eos_token_id": decoder.eos_token_id, "pad_token_id": decoder.pad_token_id},
        })  # fmt: skip
    return folder / "manifest.json"


def bucket_graph(batch: int) -> str:
    """The folder and manifest name of the decode graph for a batch bucket of ``batch`` rows."""
    return f"decode_b{batch}"


def _tensor_table(
    graphs: dict[str, dict[str, torch.Tensor]], cache_names: set[str]
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, str]], dict[str, dict]]:
    """The tensors to store, each once; per graph the entry of each of its tensor names; and the
    shape and dtype of each cache buffer (not stored). A tensor is stored once when the graphs
    hold the same tensor (same memory, shape, strides and dtype); an entry is named after the
    first name that holds it, prefixed with the graph's name where that name is taken."""
    stored: dict[str, torch.Tensor] = {}
    entry_of: dict[tuple, str] = {}
    keys: dict[str, dict[str, str]] = {}
    cache: dict[str, dict] = {}
    for graph, tensors in graphs.items():
        keys[graph] = {}
        for name, t in tensors.items():
            if name in cache_names:  # the full cache (prefill's); a bucket graph holds its first rows
                cache.setdefault(name, {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")})
                continue
            ident = _identity(t)
            key = entry_of.get(ident) if ident is not None else None
            if key is None:
                key = name if name not in stored else f"{graph}/{name}"
                stored[key] = t.detach()
                if ident is not None:
                    entry_of[ident] = key
            keys[graph][name] = key
    return stored, keys, cache


def _identity(t: torch.Tensor) -> tuple | None:
    """What makes two tensor objects the same stored tensor (None: an empty tensor, never shared)."""
    if t.numel() == 0:
        return None
    return (t.device, t.dtype, t.data_ptr(), tuple(t.shape), tuple(t.stride()))


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise InputError(f"the manifest names the cache dtype {name!r}, which this torch does not have")
    return dtype


def load_decoder(folder: Path, manifest: dict, device: str | torch.device, *, cudagraphs: bool) -> Any:
    """The ``OptimizedDecoder`` of a checked decoder folder (``artifacts.load`` checks the hashes
    first). Its ``report`` / ``decode_report`` are the saved ``report.json`` dicts, its ``plan``
    the saved plan, its graphs the generated ``Program`` modules."""
    from tcomp.generation import OptimizedDecoder
    from tcomp.plan import Plan
    from tcomp.targets import get_target

    weights = load_file(str(folder / "weights.safetensors"), device=str(device))
    cache = {
        name: torch.zeros(spec["shape"], dtype=_dtype(spec["dtype"]), device=device)
        for name, spec in manifest["cache"].items()
    }  # allocated once: both graphs write and read these tensors
    programs = {}
    buckets = [int(b) for b in manifest.get("buckets", [])]
    for g, rows in [*((g, None) for g in GRAPHS), *((bucket_graph(b), b) for b in buckets)]:
        entry = manifest["graphs"][g]
        missing = sorted(set(entry["tensors"].values()) - set(weights))
        if missing:
            raise InputError(f"{folder}: weights.safetensors lacks {missing[:3]} that the {g} graph needs")
        tensors = {name: weights[key] for name, key in entry["tensors"].items()}
        tensors.update({name: cache[name] if rows is None else cache[name][:rows] for name in entry["cache"]})
        cls = _program_class(folder / g, entry.get("out_spec"))
        programs[g] = cls(dict(sorted(tensors.items()))).eval()
    try:
        target: Any = get_target(manifest["target"])
    except InputError:  # a target registered by the process that saved it
        target = manifest["target"]
    reports = {g: json.loads((folder / g / "report.json").read_text()) for g in programs}
    decoder = OptimizedDecoder(
        programs["prefill"], programs["decode"], batch=int(manifest["batch"]), max_len=int(manifest["max_len"]),
        n_layers=int(manifest["n_layers"]), report=reports["prefill"], decode_report=reports["decode"],
        target=target, model_name=manifest.get("model", ""), cudagraphs=cudagraphs,
        decode_buckets={b: programs[bucket_graph(b)] for b in buckets},
    )  # fmt: skip
    decoder.bucket_reports = {b: reports[bucket_graph(b)] for b in buckets}
    if (folder / "plan.json").exists():
        decoder.plan = Plan.from_json((folder / "plan.json").read_text())
    generation = manifest.get("generation") or {}
    decoder.eos_token_id, decoder.pad_token_id = generation.get("eos_token_id"), generation.get("pad_token_id")
    decoder.manifest = manifest
    return decoder


def _program_class(folder: Path, out_spec: str | None) -> type:
    """The runner's ``Program`` with the graph's output structure restored (the runner returns a
    flat tuple) and ``code``: the graph's text as ``graph_after.txt`` holds it."""
    base = import_runner(folder / "runner.py").Program
    spec = pytree.treespec_loads(out_spec) if out_spec else None
    code = (folder / "graph_after.txt").read_text()

    def forward(self, *args: Any) -> Any:
        out = base.forward(self, *args)
        return pytree.tree_unflatten(list(out), spec) if spec is not None else out

    return type("Program", (base,), {"forward": forward, "code": code, "__module__": base.__module__})
