"""Fused epilogues on ONNX Runtime: the fx rewrite that makes them (step
``fuse.onnxruntime.epilogues``, with the backend's ``fused`` option) and the translations of the
dialect ops it produces into ORT's com.microsoft kernels.

Epilogues that ORT has fused contrib kernels for become tcomp dialect ops, which the exporter then
translates one-to-one.

* ``linear(x, W, b) -> gelu``             => ``tcomp.bias_gelu(linear(x, W), b, approximate)``
  (com.microsoft ``BiasGelu`` for the exact erf GELU, ``FastGelu`` for ``approximate="tanh"``:
  each computes the same function as the ATen op it replaces, never a cheaper approximation).
* ``layer_norm(a + b)`` over the last dim  => ``tcomp.skip_layer_norm(a, b, gamma, beta, bias, eps)``
  (com.microsoft ``SkipLayerNormalization``); when ``a`` is ``linear(x, W, bias)`` (through
  eval-mode dropout) the linear's bias moves into the fused op.

Both are FP_EQUIVALENT (same real function; the float additions are regrouped inside one kernel);
the step runs before ``lower.onnxruntime`` and the pipeline verifies each against the float64
reference (the dialect ops run their eager references in between).
Preconditions (a site that misses one stays as it is): float32 values (ORT's CPU kernels),
the GELU's linear has a bias and no other user; the residual add has no other user, both operands
have the LayerNorm's 3-D shape (B, N, C), and the LayerNorm has a weight.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

import tcomp.dialect  # noqa: F401 - torch.ops.tcomp.bias_gelu / skip_layer_norm
from tcomp import meta
from tcomp.backends.onnxruntime import ONNX
from tcomp.backends.onnxruntime.contrib import MsftOps
from tcomp.contract import PassResult
from tcomp.graph import copy_source_meta, val

aten = torch.ops.aten
STAGE = "fuse.onnxruntime.epilogues"


def fuse_step(gm: fx.GraphModule) -> PassResult:
    """Step ``fuse.onnxruntime.epilogues``: :func:`fuse_epilogues` as a pipeline pass."""
    counts = fuse_epilogues(gm)
    result = PassResult(gm, rewrites=sum(counts.values()))
    result.notes.append(
        f"{counts['skip_layer_norm']} residual add + LayerNorm as com.microsoft.SkipLayerNormalization, "
        f"{counts['bias_gelu']} linear bias + GELU as com.microsoft.BiasGelu/FastGelu"
    )
    return result


def fuse_epilogues(gm: fx.GraphModule) -> dict[str, int]:
    """Rewrite every matching site of ``gm`` in place; returns ``{dialect op: count}``."""

    counts = {"bias_gelu": 0, "skip_layer_norm": 0}
    for n in list(gm.graph.nodes):
        if n.op != "call_function":
            continue
        if n.target is aten.gelu.default and _bias_gelu(gm.graph, n):
            counts["bias_gelu"] += 1
        elif n.target is aten.layer_norm.default and _skip_layer_norm(gm.graph, n):
            counts["skip_layer_norm"] += 1
    if any(counts.values()):
        gm.graph.lint()
        gm.recompile()
    return counts


def _f32(*nodes: Any) -> bool:
    return all(isinstance(val(x), torch.Tensor) and val(x).dtype == torch.float32 for x in nodes)


def _arg(n: fx.Node, i: int, name: str, default: Any) -> Any:
    return n.args[i] if len(n.args) > i else n.kwargs.get(name, default)


def _biased_linear(x: Any) -> fx.Node | None:
    """``x`` when it is ``linear(input, W, bias)`` with a bias and only one user."""
    if (
        isinstance(x, fx.Node)
        and x.op == "call_function"
        and x.target is aten.linear.default
        and _arg(x, 2, "bias", None) is not None
        and len(x.users) == 1
    ):
        return x
    return None


def _unbias(graph: fx.Graph, lin: fx.Node) -> Any:
    """Drop the bias of ``lin`` (a new bias-free linear takes its place); returns the bias."""
    bias = _arg(lin, 2, "bias", None)
    with graph.inserting_before(lin):
        bare = graph.call_function(aten.linear.default, (lin.args[0], lin.args[1]))
    bare.meta.update(lin.meta)
    lin.replace_all_uses_with(bare)
    graph.erase_node(lin)
    return bias


def _mark(new: fx.Node, old: fx.Node) -> None:
    new.meta[meta.VAL] = old.meta.get(meta.VAL)
    new.meta[meta.REWRITTEN_BY] = STAGE
    copy_source_meta(new, old)


def _bias_gelu(graph: fx.Graph, gelu: fx.Node) -> bool:
    lin = _biased_linear(gelu.args[0])
    approximate = _arg(gelu, 1, "approximate", "none")
    if lin is None or approximate not in ("none", "tanh") or not _f32(gelu, lin):
        return False
    with graph.inserting_before(gelu):
        bias = _unbias(graph, lin)
        fused = graph.call_function(torch.ops.tcomp.bias_gelu.default, (gelu.args[0], bias, approximate))
    _mark(fused, gelu)
    gelu.replace_all_uses_with(fused)
    graph.erase_node(gelu)
    return True


def _through_eval_dropout(x: Any) -> Any:
    """Follow single-user eval-mode dropouts (identities) up to the value they pass on."""
    while (
        isinstance(x, fx.Node)
        and x.op == "call_function"
        and x.target is aten.dropout.default
        and _arg(x, 2, "train", True) is False
        and len(x.users) == 1
    ):
        x = x.args[0]
    return x


def _skip_layer_norm(graph: fx.Graph, ln: fx.Node) -> bool:
    add = ln.args[0]
    shape, weight = _arg(ln, 1, "normalized_shape", None), _arg(ln, 2, "weight", None)
    if (
        not isinstance(add, fx.Node)
        or add.op != "call_function"
        or add.target is not aten.add.Tensor
        or _arg(add, 2, "alpha", 1) != 1
        or len(add.users) != 1
        or weight is None
        or len(shape) != 1
    ):
        return False
    a, b = add.args[0], add.args[1]
    out = val(ln)
    if not (isinstance(a, fx.Node) and isinstance(b, fx.Node) and _f32(a, b, ln) and out.dim() == 3):
        return False
    if tuple(val(a).shape) != tuple(out.shape) or tuple(val(b).shape) != tuple(out.shape):
        return False
    first = 0  # the operand whose linear bias moves into the fused op (when there is one)
    lin = _biased_linear(_through_eval_dropout(a))
    if lin is None:
        lin = _biased_linear(_through_eval_dropout(b))
        first = 1 if lin is not None else 0
    with graph.inserting_before(ln):
        residual_bias = _unbias(graph, lin) if lin is not None else None
        x, skip = add.args[first], add.args[1 - first]  # re-read: _unbias may have replaced one
        fused = graph.call_function(
            torch.ops.tcomp.skip_layer_norm.default,
            (x, skip, weight, _arg(ln, 3, "bias", None), residual_bias, float(_arg(ln, 4, "eps", 1e-5))),
        )
    _mark(fused, ln)
    ln.replace_all_uses_with(fused)
    graph.erase_node(ln)
    graph.erase_node(add)
    return True


# --------------------------------------------------------------------------- translations


@ONNX.implements(torch.ops.tcomp.bias_gelu.default)
def bias_gelu_onnx(fused: bool = False):
    """``tcomp.bias_gelu`` as com.microsoft ``BiasGelu`` (erf) or ``FastGelu`` (tanh)."""
    from onnxscript import FLOAT

    msft = MsftOps()

    def tcomp_bias_gelu(x: FLOAT, bias: FLOAT, approximate: str = "none") -> FLOAT:
        if approximate == "none":
            return msft.BiasGelu(x, bias)  # exact erf GELU
        return msft.FastGelu(x, bias)  # the tanh formula, as aten.gelu(approximate="tanh")

    tcomp_bias_gelu.__annotations__ = {"x": FLOAT, "bias": FLOAT, "approximate": str, "return": FLOAT}
    return tcomp_bias_gelu


@ONNX.implements(torch.ops.tcomp.skip_layer_norm.default)
def skip_layer_norm_onnx(fused: bool = False):
    """``tcomp.skip_layer_norm`` as com.microsoft ``SkipLayerNormalization``."""
    from onnxscript import FLOAT

    msft = MsftOps()

    def tcomp_skip_layer_norm(
        x: FLOAT,
        skip: FLOAT,
        weight: FLOAT,
        bias: FLOAT | None = None,
        residual_bias: FLOAT | None = None,
        eps: float = 1e-5,
    ) -> FLOAT:
        return msft.SkipLayerNormalization(x, skip, weight, bias, residual_bias, epsilon=float(eps))

    tcomp_skip_layer_norm.__annotations__ = {
        "x": FLOAT,
        "skip": FLOAT,
        "weight": FLOAT,
        "bias": FLOAT | None,
        "residual_bias": FLOAT | None,
        "eps": float,
        "return": FLOAT,
    }
    return tcomp_skip_layer_norm
