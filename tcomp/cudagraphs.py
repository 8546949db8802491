"""Replaying a lowered graph as CUDA graphs, one per input signature.

A lowered transformer issues a few hundred kernels per forward; on an H200 each is done in tens of
microseconds, so issuing them from Python is slower than running them (measured in
bench/profile_e2e.py: BERT-base b32 s512 needs 13 ms of host time for 7.7 ms of GPU work). A CUDA
graph issues them all in one call. Like ``torch.compile(mode="reduce-overhead")`` this keeps one
graph per input signature (shapes, dtypes, devices, non-tensor values), captured on the second call
with that signature (the first runs directly), copies the inputs into the graph's static buffers,
replays, and returns *copies* of the outputs, so a result never changes
under the caller when the graph is replayed again.

The runner only replays inference: with grad enabled and a parameter that requires grad it runs
the graph module directly. A graph whose capture fails (host synchronisation, data-dependent
shapes) is run directly from then on, with the reason kept in ``disabled``.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import torch
import torch.utils._pytree as pytree


class CudaGraphRunner:
    def __init__(self, fn: Callable[..., Any], params: Callable[[], Any], max_graphs: int = 8):
        self.fn = fn
        self.params = params  # the tensors the graphs read in place (for the grad check)
        self.max_graphs = max_graphs
        self.graphs: collections.OrderedDict[Any, _Captured] = collections.OrderedDict()
        self.disabled: str | None = None
        self.seen: set[Any] = set()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        flat, spec = pytree.tree_flatten((args, kwargs))
        if self.disabled or not self._eligible(flat):
            return self.fn(*args, **kwargs)
        key = (spec, tuple(_signature(x) for x in flat))
        entry = self.graphs.get(key)
        if entry is None and key not in self.seen:
            # the first call with a signature runs directly: bad inputs raise their own error, and
            # kernels compile and autotune before any capture
            out = self.fn(*args, **kwargs)
            self.seen.add(key)
            return out
        if entry is None:
            try:
                entry = _Captured.capture(self.fn, flat, spec)
            except Exception as exc:  # noqa: BLE001 - any capture failure means: run it directly
                self.disabled = f"CUDA graph capture failed: {type(exc).__name__}: {str(exc).splitlines()[0]}"
                torch.cuda.synchronize()
                return self.fn(*args, **kwargs)
            self.graphs[key] = entry
            if len(self.graphs) > self.max_graphs:
                self.graphs.popitem(last=False)
        else:
            self.graphs.move_to_end(key)
        return entry.replay(flat)

    def reset(self) -> None:
        """Forget every graph (after the module's tensors moved or changed storage)."""
        self.graphs.clear()
        self.seen.clear()

    def _eligible(self, flat: list[Any]) -> bool:
        tensors = [x for x in flat if isinstance(x, torch.Tensor)]
        if not tensors or any(t.device.type != "cuda" for t in tensors):
            return False
        if torch.is_grad_enabled() and (
            any(t.requires_grad for t in tensors) or any(p.requires_grad for p in self.params())
        ):
            return False
        return not torch.cuda.is_current_stream_capturing()


def _signature(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return ("T", tuple(x.shape), x.dtype, x.device, x.stride())
    return ("V", type(x).__name__, repr(x))


class _Captured:
    def __init__(self, graph: torch.cuda.CUDAGraph, inputs: list[Any], outputs: Any):
        self.graph, self.inputs, self.outputs = graph, inputs, outputs

    @classmethod
    def capture(cls, fn: Callable[..., Any], flat: list[Any], spec: Any) -> _Captured:
        static = [x.clone() if isinstance(x, torch.Tensor) else x for x in flat]
        args, kwargs = pytree.tree_unflatten(static, spec)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            fn(*args, **kwargs)  # warm-up on a side stream, as torch.cuda.graph asks
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            out = fn(*args, **kwargs)
        return cls(graph, static, out)

    def replay(self, flat: list[Any]) -> Any:
        for dst, src in zip(self.inputs, flat):
            if isinstance(dst, torch.Tensor):
                dst.copy_(src)
        self.graph.replay()
        return pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, self.outputs)
