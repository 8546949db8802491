"""Calibration data for passes that need statistics of a model's activations.

``batches`` accepts what users hand to ``tcomp.optimize(..., calibration=...)``: a list of batches,
each a dict of keyword inputs, a tuple/list of positional inputs or one tensor (a single batch alone
is accepted too). ``record_inputs`` runs a graph on them and keeps what chosen nodes received.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor


def batches(calibration: Any) -> list[tuple[tuple, dict]]:
    """Calibration data as ``(args, kwargs)`` pairs."""
    if isinstance(calibration, (dict, Tensor)):
        calibration = [calibration]
    out = []
    for b in calibration:
        if isinstance(b, dict):
            out.append(((), b))
        elif isinstance(b, (tuple, list)):
            out.append((tuple(b), {}))
        else:
            out.append(((b,), {}))
    if not out:
        raise ValueError("calibration data is empty")
    return out


def record_inputs(
    gm: fx.GraphModule, nodes: list[fx.Node], calibration: Any, observe: Callable[[str, tuple], None]
) -> None:
    """Run ``gm`` on every calibration batch; ``observe(node name, args)`` sees the arguments each
    of ``nodes`` (call_function nodes of ``gm``) is called with. ``gm`` itself is not changed: a
    copy whose chosen nodes call a recorder runs."""
    from tcomp.pipeline import copy_graph_module

    names = {n.name for n in nodes}
    probe = copy_graph_module(gm)

    def recorder(name: str, fn: Callable):
        def run(*args, **kwargs):
            observe(name, args)
            return fn(*args, **kwargs)

        return run

    for n in probe.graph.nodes:
        if n.op == "call_function" and n.name in names:
            n.target = recorder(n.name, n.target)
    probe.recompile()
    with torch.no_grad():
        for args, kwargs in batches(calibration):
            probe(*args, **kwargs)
