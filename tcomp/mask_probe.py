"""What an attention site's mask means, found by running it: the mask and bias of a decoder step
graph's attention, evaluated on probe inputs and compared with tcomp's causal cache mask.

A decoder's step graph builds its attention mask from the step inputs (cache positions and
padding) through whatever ops the model applies to the mask tcomp passes in (Hugging Face's mask
functions convert, invert, broadcast it). Matching those op chains by shape would recognise only
the spellings written down; instead, :func:`cache_mask_form` takes the sub-graph that computes the
site's mask and bias from the step inputs, evaluates it on a few probe inputs (random cache
positions, random left padding) and compares the result with
``tcomp.kv_cache.attention_masks`` for full causal attention. The answer is "causal" when every
probe agrees on the keys the site reads; otherwise a reason (a sliding window, a bias that is more
than a mask, a mask that depends on activations).

This is a test, not a proof: a mask that agrees on every probe and differs elsewhere would be
misread. The probes cover both ends of the cache, both graphs' token counts and left padding up to
the whole prompt, which is where the masks tcomp knows differ (windows, prefixes).

The same approach reads a full forward graph's masks (:func:`causal_form`): a bool mask or an
additive one that depends on the input sizes alone (``tril`` of ones, ``arange[:, None] >=
arange[None, :]``, a registered triangle sliced to the length) is run at the example's sizes and at
random other ones, and is causal when it equals ``tcomp.attention``'s own causal mask at each.
"""

from __future__ import annotations

import random

import sympy
import torch
import torch.fx as fx

from tcomp import kv_cache, meta
from tcomp.decoder import STEP_INPUTS
from tcomp.graph import val

PROBES = 6


def _ancestors(roots: list, stop=lambda _n: False) -> list[fx.Node]:
    """``roots`` and every node they are computed from, not looking past a node ``stop`` accepts."""
    seen: set[fx.Node] = set()
    stack = [r for r in roots if isinstance(r, fx.Node)]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if not stop(n):
            stack.extend(n.all_input_nodes)
    return list(seen)


def _evaluable(gm: fx.GraphModule, nodes: list[fx.Node]) -> str:
    """"" when ``nodes`` can be run apart from the rest of the graph, else why not."""
    for n in nodes:
        if n.op == "get_attr" and meta.KV_CACHE in n.meta:
            return "it reads the KV cache"
        if n.op == "call_module":
            return f"it calls a submodule ({n.target})"
        if n.op == "call_function":
            schema = getattr(n.target, "_schema", None)
            if schema is not None and schema.is_mutable:
                return f"it is computed by an in-place op ({n.target})"
        if n.op == "placeholder" and meta.VAL not in n.meta:
            return "a step input without a recorded shape"
    return ""


def _run(gm: fx.GraphModule, nodes: list[fx.Node], inputs: dict[str, torch.Tensor], outs: list, known=None):
    """Evaluate ``nodes`` (closed under inputs) on ``inputs`` (by placeholder name); ``known``: nodes
    whose values are given (sizes)."""
    env: dict[fx.Node, object] = dict(known or {})
    for n in gm.graph.nodes:  # graph order is a topological order
        if n not in nodes or n in env:
            continue
        if n.op == "placeholder":
            env[n] = inputs[n.target]
        elif n.op == "get_attr":
            obj = gm
            for part in n.target.split("."):
                obj = getattr(obj, part)
            env[n] = obj
        elif n.op == "call_function":
            args = fx.node.map_arg(n.args, lambda x: env[x])
            kwargs = fx.node.map_arg(n.kwargs, lambda x: env[x])
            env[n] = n.target(*args, **kwargs)
    return [env[o] if isinstance(o, fx.Node) else o for o in outs]


def _probe_inputs(gm: fx.GraphModule, gen: torch.Generator, i: int) -> dict[str, torch.Tensor] | None:
    """Step inputs for probe ``i``: n tokens at a random start, random left padding per row."""
    ph = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(ph) != len(STEP_INPUTS):
        return None
    ids, padding = val(ph[0]), val(ph[STEP_INPUTS.index("padding")])
    B, M = int(padding.shape[0]), int(padding.shape[1])
    n_dim = ids.shape[1]
    if isinstance(n_dim, int):
        n = n_dim
    else:  # the prefill graph: a token count of its own per probe, the whole cache once
        n = [2, M, 3, max(2, M // 2), 5, 7][i % 6]
    n = min(n, M)
    start = 0 if i % 2 == 0 else int(torch.randint(0, M - n + 1, (1,), generator=gen))
    pos = torch.arange(start, start + n)
    pad = torch.ones(B, M, dtype=torch.long)
    for b in range(B):
        if b % 2 == 0 or i % 3 == 0:  # some rows left-padded, up to the whole prompt
            pad[b, : int(torch.randint(0, start + n, (1,), generator=gen))] = 0
    positions = (pad[:, start : start + n].cumsum(-1) - 1).clamp(min=0) + start
    dev = padding.device if padding.device.type != "meta" else torch.device("cpu")
    return {
        ph[0].target: torch.ones(B, n, dtype=ids.dtype, device=dev),
        ph[1].target: positions.to(dev),
        ph[2].target: pos.to(dev),
        ph[3].target: pad.to(dev),
    }


def cache_mask_form(gm: fx.GraphModule, mask, bias, *, probes: int = PROBES, seed: int = 0) -> str:
    """"causal" when the (mask, bias) pair of a cache-form attention site of the step graph ``gm``
    equals tcomp's full causal cache mask on every probe (bias, when given, 0 where allowed and
    the dtype's minimum or -inf elsewhere), else the reason it is not (see the module docstring)."""
    if mask is None and bias is None:
        return "the site has no mask: its keys are not limited to the ones before each query"
    nodes = _ancestors([mask, bias])
    why = _evaluable(gm, nodes)
    if why:
        return f"its mask cannot be evaluated from the step inputs alone: {why}"
    gen = torch.Generator().manual_seed(seed)
    ph = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
    for i in range(probes):
        inputs = _probe_inputs(gm, gen, i)
        if inputs is None:
            return "not a decoder step graph (its inputs are not the step's four)"
        try:
            m, b = _run(gm, nodes, inputs, [mask, bias])
        except Exception as exc:  # noqa: BLE001 - a mask chain that cannot run apart is not recognised
            return f"its mask cannot be evaluated from the step inputs alone ({type(exc).__name__}: {exc})"
        pos, pad = inputs[ph[2]], inputs[ph[3]]
        want = kv_cache.attention_masks(pos, pad, windows={"full": None}, dtype=None)["full"]
        allowed = torch.ones_like(want)
        if m is not None:
            allowed = allowed & m.to(torch.bool)
        if b is not None:
            if not b.is_floating_point():
                return "its additive bias is not a float tensor"
            lo = torch.finfo(b.dtype).min / 2
            open_ = b > lo
            if (b.masked_fill(~open_, 0) != 0).any():
                return "it has an additive bias that is more than a mask (relative positions, ALiBi)"
            allowed = allowed & open_
        kv_len = int(pos[-1]) + 1
        allowed = allowed.expand(*want.shape[:1], allowed.shape[1], *want.shape[2:])[..., :kv_len]
        if not bool((allowed == want[..., :kv_len]).all()):
            window = bool((allowed <= want[..., :kv_len]).all())
            return (
                "its mask is not the full causal cache mask: "
                + ("it hides earlier tokens (a sliding window or chunked attention)" if window else
                   "it lets queries read later or padding tokens")
            )  # fmt: skip
    return "causal"


# -- full forward graphs: a mask computed from the sizes alone -----------------------------------------


def _size_expr(n: fx.Node):
    """The sympy expression of a node that computes a size (its value a SymInt or an int), else None."""
    v = val(n)
    if isinstance(v, torch.SymInt):
        return v.node.expr
    if isinstance(v, int) and not isinstance(v, bool):
        return sympy.Integer(v)
    return None


def _symbols(exprs) -> dict:
    """Each free symbol of ``exprs`` -> (example value, lowest, highest) as the capture recorded them."""
    out = {}
    for e in exprs:
        if not isinstance(e, torch.SymInt):
            continue
        env = e.node.shape_env
        for sym in e.node.expr.free_symbols:
            hint = (env.backed_var_to_val if hasattr(env, "backed_var_to_val") else env.var_to_val).get(sym)
            if hint is None:
                return {}  # a size read from data (unbacked): no example to start from
            rng = env.var_to_range.get(sym)
            lo = int(rng.lower) if rng is not None and isinstance(rng.lower, sympy.Integer) else 1
            hi = int(rng.upper) if rng is not None and isinstance(rng.upper, sympy.Integer) else 1 << 30
            out[sym] = (int(hint), max(lo, 1), hi)
    return out


def causal_form(
    gm: fx.GraphModule, mask: fx.Node, sizes: tuple, *, floor: float, probes: int = PROBES, seed: int = 0
) -> str:
    """"causal" when ``mask`` -- a bool keep-mask (True = attend), or an additive float mask (0 where
    allowed, at most ``floor`` elsewhere), broadcast against attention scores of ``sizes`` (queries,
    keys: ints or the graph's SymInts) -- is ``tcomp.attention``'s causal mask (key ``j`` for query
    ``i`` when ``j <= i``) wherever the graph runs; else the reason it is not. The mask may read
    sizes, constants and attributes, not the inputs' values; it is evaluated at the example's sizes
    and at ``probes - 1`` random others."""
    is_size = lambda n: _size_expr(n) is not None  # noqa: E731 - a size is substituted, not computed
    nodes = _ancestors([mask], stop=is_size)
    for n in nodes:
        if n.op == "placeholder" and not is_size(n):
            return "the mask depends on the values of the inputs"
    why = _evaluable(gm, nodes)
    if why:
        return f"the mask cannot be evaluated apart from the graph: {why}"
    size_nodes = [n for n in nodes if is_size(n)]
    sym_vals = [val(n) for n in size_nodes] + list(sizes)
    syms = _symbols(sym_vals)
    if any(isinstance(v, torch.SymInt) for v in sym_vals) and not syms:
        return "the mask reads a size computed from data"
    rand = random.Random(seed)
    ran = 0
    for i in range(probes):
        assign = {
            s: h if i == 0 else rand.randint(lo, max(lo, min(hi, max(h, 16)))) for s, (h, lo, hi) in syms.items()
        }
        try:
            known = {n: int(_size_expr(n).subs(assign)) for n in size_nodes}
            n_q, n_k = (int(sympy.sympify(d.node.expr if isinstance(d, torch.SymInt) else d).subs(assign))
                        for d in sizes)  # fmt: skip
            (m,) = _run(gm, nodes, {}, [mask], known)
            m = m.expand(*m.shape[:-2], n_q, n_k)
        except Exception:  # noqa: BLE001 - the model cannot run at these sizes either (a sliced buffer too short)
            if i == 0:
                return "the mask cannot be evaluated apart from the graph"
            continue
        if m.dtype == torch.bool:
            allowed = m
        elif m.is_floating_point():
            allowed = m > floor
            if not bool(((m == 0) | (m <= floor)).all()):  # NaN is neither
                return "the additive mask is more than a mask (a bias)"
        else:
            return f"the mask is a {m.dtype} tensor"
        tri = torch.ones(n_q, n_k, dtype=torch.bool, device=m.device).tril()
        if not bool((allowed == tri).all()):
            return "the mask is not the causal one (key j for query i when j <= i)"
        ran += 1
        if not syms:
            break  # static sizes: every probe would be the same
    return "causal" if ran else "the mask cannot be evaluated apart from the graph"
