"""Recognise relative-position biases on attention sites: an additive score bias that depends only on
the offset ``j - i`` between key and query (ALiBi slopes, T5 bucketed biases, learned 1-D offset
tables, additive causal masks, ...).

The proof is by evaluation: the bias's producer subgraph is cut out of the graph and run on its own
(it may read parameters and the *sizes* of the model inputs, never their values) at the example
sequence length and, when that length is dynamic, at a few others; at each length the bias must be
Toeplitz per head, ``b[h, i, j] = coeffs[h, (j - i) + n - 1]``, bit for bit, and equal across the
batch. A bias that fails is left alone with the reason (``NotRelative``).

What is recorded (``RelativeBias``): the lengths checked, the coefficients at the example length and
``family`` ("linear": ALiBi-like ``slope_h * (j - i)`` on the past, with the slopes; otherwise
"offset table"). The rewrite (``attention.rpe_fft``) computes the coefficients for any n from the
bias's producer (``passes/rpe_coeffs.py``); ``evaluate`` runs a producer on its own for its checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import Tensor

from tcomp.graph import val

aten = torch.ops.aten
EXTRA_LENGTHS = (1, 2, 7)  # lengths checked besides the example one when the sequence dim is dynamic


class NotRelative(Exception):
    """The bias is not provably a function of ``j - i`` alone (the message says why)."""


@dataclass
class RelativeBias:
    heads: int  # heads of the bias (1: shared by every head)
    lengths: list[int]  # sequence lengths at which it was checked to be Toeplitz
    coeffs: Tensor  # (heads, 2n-1) float64 at the example length n (lengths[0])
    family: str  # "linear" (ALiBi-like, slopes recorded) or "offset table"
    slopes: list[float] = field(default_factory=list)


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(n.all_input_nodes)
    return seen


def _producer(gm: fx.GraphModule, bias: fx.Node) -> tuple[fx.GraphModule, list[fx.Node]]:
    """The subgraph computing ``bias`` as its own module, and the placeholders it reads."""
    keep = _ancestors(bias)
    places = [n for n in gm.graph.nodes if n in keep and n.op == "placeholder"]
    for p in places:
        for u in p.users:
            if u in keep and u.target is not aten.sym_size.int:
                raise NotRelative(f"the bias depends on the values of the model input {p.name!r}")
    sub, env = fx.Graph(), {}
    for n in gm.graph.nodes:
        if n in keep:
            env[n] = sub.node_copy(n, lambda a: env[a])
    sub.output(env[bias])
    return fx.GraphModule(gm, sub), places


def _hint(d) -> int:
    return int(d.node.hint) if isinstance(d, torch.SymInt) else int(d)


def _dummy(p: fx.Node, seq, n: int) -> Tensor:
    v = val(p)
    dims = [
        n if (isinstance(d, torch.SymInt) and str(d.node.expr) == str(seq)) else _hint(d) for d in v.shape
    ]
    return torch.zeros(dims, dtype=v.dtype)


def sequence_symbol(node: fx.Node):
    """The sequence length of a (…, n, n) node: its sympy symbol when dynamic, else the int."""
    d = val(node).shape[-1]
    return d.node.expr if isinstance(d, torch.SymInt) else int(d)


def evaluate(gm: fx.GraphModule, node: fx.Node, seq, n: int) -> Tensor:
    """Run ``node``'s producer on its own with the sequence length ``seq`` set to ``n``
    (``NotRelative`` if it reads the values of a model input)."""
    sub, places = _producer(gm, node)
    with torch.no_grad():
        return sub(*[_dummy(p, seq, n) for p in places])


def toeplitz_coeffs(b: Tensor) -> Tensor:
    """``(H, 2n-1)`` coefficients of a (..., H, n, n) bias, or ``NotRelative`` if it is not Toeplitz
    per head (exactly) or differs across the leading (batch) dims."""
    b = b.reshape(-1, *b.shape[-3:]) if b.dim() >= 3 else b.reshape(1, 1, *b.shape[-2:])
    if b.shape[0] > 1 and not torch.equal(b, b[:1].expand_as(b)):
        raise NotRelative("the bias differs across the batch")
    b = b[0]
    n = b.shape[-1]
    if b.shape[-2] != n:
        raise NotRelative(f"the bias is not square ({b.shape[-2]} queries, {n} keys)")
    if torch.isnan(b).any():
        raise NotRelative("the bias has NaN entries")
    coeffs = torch.cat([b[:, :, 0].flip(-1), b[:, 0, 1:]], dim=-1)
    idx = torch.arange(n)[None, :] - torch.arange(n)[:, None] + n - 1
    if not torch.equal(coeffs[:, idx], b):
        h, i, j = (int(t[0]) for t in torch.nonzero(coeffs[:, idx] != b, as_tuple=True))
        raise NotRelative(
            f"the bias is not a function of j - i: head {h}, entry ({i}, {j}) differs from the "
            f"entry with the same offset in the first row/column (n = {n})"
        )
    return coeffs


def _family(coeffs: Tensor, n: int) -> tuple[str, list[float]]:
    past = coeffs[:, :n]  # offsets -(n-1) .. 0
    if n < 3 or not torch.isfinite(past).all():
        return "offset table", []
    off = torch.arange(-(n - 1), 1, dtype=coeffs.dtype)
    slopes = -(past[:, 0] - past[:, -1]) / (n - 1)
    if torch.allclose(past - past[:, -1:], slopes[:, None] * off, rtol=1e-6, atol=1e-9):
        return "linear", [float(s) for s in slopes]  # bias = slope * (j - i) on the past
    return "offset table", []


def relative_bias(gm: fx.GraphModule, bias: fx.Node) -> RelativeBias:
    """Prove that ``bias`` (an attention site's additive bias node) depends only on ``j - i``."""
    s = val(bias).shape
    if len(s) < 2:
        raise NotRelative(f"the bias has shape {tuple(s)}: not a query-by-key matrix")
    seq = s[-1].node.expr if isinstance(s[-1], torch.SymInt) else None
    if str(s[-2].node.expr if isinstance(s[-2], torch.SymInt) else s[-2]) != str(
        seq if seq is not None else s[-1]
    ):
        raise NotRelative(f"the bias is not square (shape {tuple(s)}): not self-attention")
    sub, places = _producer(gm, bias)
    n0 = _hint(s[-1])
    lengths = [n0] + ([m for m in EXTRA_LENGTHS if m != n0] if seq is not None else [])
    found, checked = None, []
    for n in lengths:
        try:
            with torch.no_grad():
                b = sub(*[_dummy(p, seq, n) for p in places])
        except Exception as exc:  # noqa: BLE001 - another length may be out of the model's range
            if n == n0:
                raise NotRelative(f"the bias could not be evaluated on its own: {exc}") from exc
            continue
        c = toeplitz_coeffs(b.double())
        checked.append(n)
        found = c if found is None else found
    family, slopes = _family(found, n0)
    return RelativeBias(int(found.shape[0]), checked, found, family, slopes)
